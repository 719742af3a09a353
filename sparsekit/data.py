"""Text sources -> seeded, fixed-length token samples.

Sources: ``demo`` (the embedded Shakespeare split: calibration plays for calibration, held-out
plays for evaluation), ``wikitext2`` and ``c4`` (through the ``datasets`` package, when reachable
or cached), and local ``.txt`` / ``.jsonl`` files (``text`` field per line).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sparsekit.errors import BadInput, Failure

DEMO_DIR = Path(__file__).parent / "demo"
NAMED = ("demo", "wikitext2", "c4")


def check_source(source: str) -> str:
    if source in NAMED:
        return source
    path = Path(source).expanduser()
    if path.suffix not in (".txt", ".jsonl"):
        raise BadInput(f"unknown dataset {source!r}: use demo, wikitext2, c4, or a .txt/.jsonl file.")
    if not path.is_file():
        raise BadInput(f"dataset file {source} does not exist.")
    return source


def load_text(source: str, split: str) -> str:
    """The raw text of ``source``; ``split`` is 'calibration' or 'evaluation'."""
    check_source(source)
    if source == "demo":
        name = "calib.txt" if split == "calibration" else "eval.txt"
        path = DEMO_DIR / name
        if not path.exists():
            raise Failure(f"the embedded demo text {name} is missing from this installation.")
        return path.read_text(encoding="utf-8")
    if source == "wikitext2":
        ds = _hf_dataset("wikitext", "wikitext-2-raw-v1", "train" if split == "calibration" else "test")
        return "\n\n".join(ds["text"])
    if source == "c4":
        if split == "calibration":
            files = {"train": "en/c4-train.00000-of-01024.json.gz"}
            ds = _hf_dataset("allenai/c4", None, "train", data_files=files)
        else:
            files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
            ds = _hf_dataset("allenai/c4", None, "validation", data_files=files)
        return "\n\n".join(ds["text"][:5000])
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise BadInput(f"{source} line {n} is not a JSON object with a 'text' field.") from exc
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8", errors="replace")


def _hf_dataset(name: str, config: str | None, split: str, **kwargs):
    try:
        import datasets
    except ImportError as exc:
        raise Failure("the 'datasets' package is needed for wikitext2/c4; pip install datasets.") from exc
    try:
        return datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as exc:  # offline, blocked, or not cached
        raise Failure(f"could not load dataset {name} ({split}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; it needs the network or a local cache.") from exc


def tokenize(text: str, tokenizer) -> torch.Tensor:
    """All tokens of ``text`` as a 1-D LongTensor (a BOS first if the tokenizer adds one)."""
    # the text is one long stream, cut into windows later: the "longer than the model" warning is noise
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids[0]
    return ids.long()


def calibration_samples(source: str, tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens that share no token, ``[nsamples, seqlen]``, reproducible by seed.

    The token stream is cut into back-to-back windows from a random offset and ``nsamples`` of them
    are drawn without replacement. (Windows at independent random starts overlap and count some
    text twice: on the demo model that alone moved the achieved activation sparsity of held-out
    text by up to 0.006 at a site; benchmarks/NOTES.md.) A text with fewer windows than asked for
    gives all of them, and the rest start at random positions.
    """
    ids = tokenize(load_text(source, "calibration"), tokenizer)
    if ids.numel() <= seqlen:
        raise BadInput(f"dataset {source!r} has {ids.numel()} tokens, fewer than --seqlen {seqlen}.")
    gen = torch.Generator().manual_seed(seed)
    n = ids.numel()
    offset = int(torch.randint(0, n % seqlen + 1, (1,), generator=gen))
    count = (n - offset) // seqlen
    starts = (offset + seqlen * torch.randperm(count, generator=gen)[:nsamples]).tolist()
    if nsamples > count:
        starts += torch.randint(0, n - seqlen + 1, (nsamples - count,), generator=gen).tolist()
    return torch.stack([ids[s : s + seqlen] for s in starts])


def eval_tokens(source: str, tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """The evaluation text of ``source`` as one sequence ``[1, N]`` (optionally the first max_tokens)."""
    ids = tokenize(load_text(source, "evaluation"), tokenizer)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return ids.unsqueeze(0)
