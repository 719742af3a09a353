"""``sparsekit prune`` as a function: validate, load, (evaluate), prune, (evaluate), save.

Everything the user asked for is checked before the model is loaded and before anything is
written. The model is loaded on the CPU; ``prune_model`` brings one decoder layer at a time to
the compute device. ``--eval`` moves the whole model to the device for the perplexity runs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sparsekit.errors import BadInput, Failure
from sparsekit.pruning.masks import check_settings
from sparsekit.pruning.prune import PruneReport, prune_model
from sparsekit.pruning.save import KIND, save_pruned

# on_progress(stage, done, total): stage is "calibration data", "perplexity before", "pruning",
# "perplexity after" or "saving"; total is None while unknown
OnProgress = Callable[[str, int, "int | None"], None]


@dataclass
class PruneOutcome:
    out: Path
    report: PruneReport
    manifest: dict
    ppl_before: object | None = None  # evaluate.Perplexity
    ppl_after: object | None = None

    def summary(self) -> dict:
        m = self.manifest
        res = {
            "out": str(self.out),
            **{k: m.get(k) for k in ("model", "method", "sparsity", "structure", "calib_dataset", "nsamples",
                                     "seqlen", "seed", "ignore", "dtype", "device")},
            "overall": self.report.overall,
            "per_layer": self.report.per_layer,
            "per_linear": self.report.per_linear,
            "peak_device_bytes": self.report.peak_device_bytes,
            "seconds": self.report.seconds,
        }
        for key, ppl in (("ppl_before", self.ppl_before), ("ppl_after", self.ppl_after)):
            res[key] = None if ppl is None else ppl.as_dict()
        return res


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


@contextlib.contextmanager
def _quiet_transformers():
    """No transformers progress bars or tokenizer-length warnings on stderr (we draw our own)."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _perplexity(model, tokens, seqlen: int, dataset: str, device: torch.device, stage: str, on_progress: OnProgress):
    from sparsekit.evaluate import perplexity

    try:
        model.to(device)
        return perplexity(model, tokens, seqlen, dataset=dataset, progress=lambda i, n: on_progress(stage, i, n))
    except torch.cuda.OutOfMemoryError as exc:
        raise Failure(f"--eval needs the whole model on {device} and it does not fit; prune without --eval "
                      "(pruning itself holds one layer at a time).") from exc
    finally:
        model.to("cpu")


def run_prune(*, out: Path, model: str = "demo", method: str = "wanda", sparsity: float | None = None,
              structure: str = "unstructured", calib_dataset: str = "demo", nsamples: int = 128,
              seqlen: int | None = None, seed: int = 0, ignore=(), eval: bool = False, eval_dataset: str = "demo",
              device: str = "auto", dtype: str = "auto", on_progress: OnProgress | None = None) -> PruneOutcome:
    """Prune ``model`` and write it to ``out`` (see the module docstring); the CLI's arguments."""
    with _quiet_transformers():
        return _run_prune(out=out, model=model, method=method, sparsity=sparsity, structure=structure,
                          calib_dataset=calib_dataset, nsamples=nsamples, seqlen=seqlen, seed=seed, ignore=ignore,
                          eval=eval, eval_dataset=eval_dataset, device=device, dtype=dtype, on_progress=on_progress)


def _run_prune(*, out, model, method, sparsity, structure, calib_dataset, nsamples, seqlen, seed, ignore, eval,
               eval_dataset, device, dtype, on_progress) -> PruneOutcome:
    from sparsekit.data import calibration_samples, check_source, eval_tokens
    from sparsekit.formats.checkpoint import check_out_dir
    from sparsekit.models import default_seqlen, load_config, load_model, resolve_device, resolve_dtype
    from sparsekit.pruning.prune import check_shapes, ignored_names

    on_progress = on_progress or _noop
    method = getattr(method, "value", method)
    dtype = getattr(dtype, "value", dtype)
    out = Path(out)
    sparsity, nm = check_settings(method, sparsity, structure)
    check_out_dir(out, KIND)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    needs_data = method != "magnitude" and sparsity > 0
    if needs_data:
        check_source(calib_dataset)
    if eval:
        check_source(eval_dataset)
    if nsamples < 1:
        raise BadInput(f"--nsamples must be at least 1, got {nsamples}.")
    config = load_config(model)  # unsupported architecture / missing dir -> BadInput
    seqlen = default_seqlen(config, seqlen)

    lm, tokenizer = load_model(model, device="cpu", dtype=torch_dtype)
    ignore = list(ignore or ())
    check_shapes(lm, method, nm, ignored_names(lm, ignore))  # before the slow parts
    torch.manual_seed(seed)
    samples = None
    if needs_data:
        on_progress("calibration data", 0, None)
        samples = calibration_samples(calib_dataset, tokenizer, nsamples, seqlen, seed=seed)
    tokens = eval_tokens(eval_dataset, tokenizer) if eval else None

    ppl_before = ppl_after = None
    if eval:
        ppl_before = _perplexity(lm, tokens, seqlen, eval_dataset, dev, "perplexity before", on_progress)
    report = prune_model(lm, samples, method=method, sparsity=sparsity, structure=structure, ignore=ignore,
                         device=dev, progress=lambda i, n: on_progress("pruning", i, n))
    if eval:
        ppl_after = _perplexity(lm, tokens, seqlen, eval_dataset, dev, "perplexity after", on_progress)

    settings = {
        "model": model,
        "method": method,
        "sparsity": sparsity,
        "structure": report.structure,
        "calib_dataset": calib_dataset if needs_data else None,
        "nsamples": nsamples if needs_data else None,
        "seqlen": seqlen if needs_data else None,
        "seed": seed,
        "ignore": ignore,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "device": str(dev),
        "made_by": "sparsekit prune",
    }
    if eval:
        settings["eval"] = {"before": ppl_before.as_dict(), "after": ppl_after.as_dict()}
    on_progress("saving", 0, None)
    manifest = save_pruned(lm, tokenizer, out, report, settings)
    return PruneOutcome(out=out, report=report, manifest=manifest, ppl_before=ppl_before, ppl_after=ppl_after)
