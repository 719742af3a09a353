"""``sparsekit convert``: pack every decoder linear into a weight format, store the activation
thresholds, and write an HF model dir that ``from_pretrained`` (after ``import sparsekit``) and
``sparsekit.load`` build with SparseLinear layers.

The dir holds ``config.json`` (with ``quantization_config = {"quant_method": "sparsekit",
"format": ..., ...}``), ``model*.safetensors`` (``<linear>.<key>`` for the format's tensors,
``<linear>.threshold`` float32 scalars, ``<linear>.threshold_relative`` uint8 scalars for relative
thresholds, every other tensor as in the source), the tokenizer, and
``sparsekit.json`` (source, settings, per-linear and per-layer sparsity, sizes, sha256 of every
file). Everything is validated first and written under a temporary name, renamed when complete.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sparsekit.errors import BadInput, Failure, check_fraction

KIND = "convert"
MAX_SHARD_BYTES = 4 * 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class ConvertOutcome:
    out: Path
    format: str
    manifest: dict
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        m = self.manifest
        return {"out": str(self.out), "format": self.format, "weight_sparsity": m["weight_sparsity"],
                "activation_sparsity": m["activation_sparsity"], "sizes": m["sizes"], "per_layer": m["per_layer"],
                "warnings": self.warnings}


def _torch_dtype(dtype, config) -> torch.dtype:
    from sparsekit.models import resolve_dtype

    name = getattr(dtype, "value", dtype) or "auto"
    if name != "auto":
        return resolve_dtype(name, torch.device("cpu"))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _validate(fmt: str, out: Path, model: str, calibration, activation_sparsity, thresholds):
    from sparsekit.formats.checkpoint import check_out_dir, read_manifest
    from sparsekit.models import load_config, resolve_model_path
    from sparsekit.runtime.linear import FORMATS

    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if (calibration is None) != (activation_sparsity is None) and thresholds is None:
        raise BadInput("--calibration and --activation-sparsity go together: give both (thresholds) or neither.")
    if activation_sparsity is not None:
        check_fraction("--activation-sparsity", activation_sparsity)
    if calibration is not None and not Path(calibration).is_dir():
        raise BadInput(f"calibration directory {calibration} does not exist.")
    check_out_dir(out, KIND)
    config = load_config(model)
    if getattr(config, "quantization_config", None):
        raise BadInput(f"{model} is already quantized or converted (its config has a quantization_config); convert the pruned dense model.")
    path = resolve_model_path(model)
    if Path(path).is_dir() and Path(out).resolve() == Path(path).resolve():
        raise BadInput("--out must differ from the model directory.")
    source_manifest = read_manifest(Path(path)) if Path(path).is_dir() else None
    return config, path, source_manifest


def _load(path: str, dtype: torch.dtype, config):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress bar reports the stages
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    except OSError as exc:
        raise Failure(f"could not load model {path}: {str(exc).splitlines()[0]}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = None  # a weights-only dir: the converted dir has no tokenizer either
    local = Path(path).is_dir()
    if not local or any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            pass
    return model.eval(), tokenizer


def _size_warnings(fmt: str, report: dict) -> list[str]:
    """One sentence when a format stores some weights in more bytes than dense."""
    bloated = {n: v for n, v in report["per_linear"].items() if v["bytes"] > v["dense_bytes"]}
    if not bloated or fmt in ("dense", "teal"):
        return []
    sp = [v["sparsity"] for v in bloated.values()]
    packed = sum(v["bytes"] for v in bloated.values())
    dense = sum(v["dense_bytes"] for v in bloated.values())
    span = f"{min(sp):.1%}" if f"{min(sp):.1%}" == f"{max(sp):.1%}" else f"{min(sp):.1%} to {max(sp):.1%}"
    return [f"{len(bloated)} of {len(report['per_linear'])} linears have weight sparsity "
            f"{span}, too low for {fmt}: they take {packed / 2**20:.2f} MiB instead of "
            f"{dense / 2**20:.2f} MiB dense ({packed / dense:.2f}x); prune first (sparsekit prune) or use --format dense/teal."]


def _per_layer(model, report: dict, s2_by_linear: dict) -> list[dict]:
    from sparsekit.models import decoder_layers

    rows = []
    for i in range(len(decoder_layers(model))):
        items = {n: v for n, v in report["per_linear"].items() if n.startswith(f"model.layers.{i}.")}
        dense = sum(v["dense_bytes"] for v in items.values())
        zeros = sum(v["sparsity"] * v["dense_bytes"] for v in items.values())
        s2 = [s2_by_linear[n] for n in items if s2_by_linear.get(n) is not None]
        rows.append({
            "layer": i,
            "weight_sparsity": zeros / dense if dense else 0.0,
            "activation_sparsity": sum(s2) / len(s2) if s2 else None,
            "bytes": sum(v["bytes"] for v in items.values()),
            "dense_bytes": dense,
        })
    return rows


def _state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors to save: persistent state, tied duplicates dropped (the first name is kept)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def write_tensors(directory: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """HF layout: ``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` + index."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names + ["model.safetensors.index.json"]


def run_convert(out: Path, model: str = "demo", fmt: str = "spdp", calibration: Path | None = None,
                activation_sparsity: float | None = None, greedy: bool = False, dtype="auto",
                thresholds: dict[str, float] | None = None, ignore=(), tile_rows: int = 64,
                max_shard_bytes: int = MAX_SHARD_BYTES, on_progress: Progress | None = None) -> ConvertOutcome:
    """Validate, load, pack, write (atomically). ``thresholds`` (name -> t) may be given instead of
    a calibration dir (library use); warnings are returned in the outcome and also issued with
    ``warnings.warn``."""
    import warnings

    from sparsekit.env import environment
    from sparsekit.formats.checkpoint import MANIFEST, atomic_dir, sha256_file, verify, write_json_atomic
    from sparsekit.formats.semi24 import NotTwoFour, check
    from sparsekit.models import linear_refs, signature
    from sparsekit.runtime.patch import convert_model, ignored

    out = Path(out)
    started = time.perf_counter()
    progress = on_progress or (lambda stage, done, total: None)
    config, path, source_manifest = _validate(fmt, out, model, calibration, activation_sparsity, thresholds)
    if source_manifest is not None:
        verify(Path(path))  # do not convert a tampered pruned dir
    torch_dtype = _torch_dtype(dtype, config)
    progress("loading", 0, None)
    net, tokenizer = _load(path, torch_dtype, config)
    expected: dict[str, float] = {}
    if calibration is not None:
        from sparsekit.activation import Calibration

        cal = Calibration.load(Path(calibration), net)
        thresholds = cal.thresholds(float(activation_sparsity), greedy=greedy)
        expected = cal.expected(float(activation_sparsity), greedy=greedy)
    from sparsekit.activation.sparsify import Thresholds

    thresholds = Thresholds.of(thresholds)
    refs = [r for r in linear_refs(net) if not ignored(r.name, ignore)]
    if fmt == "2:4":
        for r in refs:
            try:
                check(r.module.weight, r.name)
            except NotTwoFour as exc:
                raise BadInput(f"{exc} Prune with --structure 2:4 first.") from exc
    found: list[str] = []
    if fmt == "teal" and not thresholds:
        found.append("teal without --calibration/--activation-sparsity stores no thresholds, so it runs as dense.")
    encode_kwargs = {"tile_rows": tile_rows} if fmt == "spdp" else {}
    report = convert_model(net, fmt, thresholds, ignore=ignore,
                           progress=lambda d, t: progress("packing", d, t), **encode_kwargs)
    found += _size_warnings(fmt, report)
    for w in found:
        warnings.warn(w, stacklevel=2)

    # activation sparsity each linear is calibrated to reach (greedy: uneven over projections)
    s2_by_linear = {n: (expected.get(n, activation_sparsity) if thresholds.get(n) is not None else None)
                    for n in report["per_linear"]}
    per_layer = _per_layer(net, report, s2_by_linear)
    qc = {
        "quant_method": "sparsekit",
        "format": fmt,
        "weight_sparsity": round(report["weight_sparsity"], 6),
        "activation_sparsity": activation_sparsity,
        "greedy": bool(greedy) if calibration is not None else None,
        "thresholds": bool(thresholds),
        # relative: the o_proj thresholds scale with each token's mean |x| (a per-linear
        # <name>.threshold_relative tensor says which); absolute: |x| > t everywhere
        "threshold_rule": ("relative" if thresholds.relative else "absolute") if thresholds else None,
        "tile_rows": tile_rows if fmt == "spdp" else None,
        "modules_to_not_convert": report["ignored"],
    }
    net.config.quantization_config = qc
    progress("writing", 0, None)
    with atomic_dir(out) as tmp:
        tensors = _state_dict(net)
        files = write_tensors(tmp, tensors, max_shard_bytes)
        net.config.save_pretrained(tmp)
        if getattr(net, "generation_config", None) is not None and net.can_generate():
            net.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        file_bytes = {f: (tmp / f).stat().st_size for f in files}
        linear_names = {f"{n}." for n in report["per_linear"]}
        other = sum(t.numel() * t.element_size() for n, t in tensors.items()
                    if not any(n.startswith(p) for p in linear_names))
        sizes = {
            "linears_bytes": report["bytes"],
            "linears_dense_bytes": report["dense_bytes"],
            "other_tensor_bytes": other,
            "tensor_files_bytes": sum(file_bytes.values()),
            "dense_model_bytes": report["dense_bytes"] + other,
            "files": file_bytes,
        }
        hashed = [f for f in files] + ["config.json"]
        manifest = {
            "kind": KIND,
            "format": fmt,
            "source": {"model": model, "path": str(path),
                       "kind": (source_manifest or {}).get("kind"),
                       "method": (source_manifest or {}).get("method"),
                       "sparsity": (source_manifest or {}).get("sparsity"),
                       "structure": (source_manifest or {}).get("structure")},
            "settings": {"format": fmt, "calibration": None if calibration is None else str(calibration),
                         "activation_sparsity": activation_sparsity, "greedy": bool(greedy), "dtype": str(torch_dtype).split(".")[-1],
                         "ignore": list(ignore or ()), "tile_rows": tile_rows if fmt == "spdp" else None},
            "weight_sparsity": report["weight_sparsity"],
            "activation_sparsity": activation_sparsity,
            "per_layer": per_layer,
            "per_linear": {n: {**v, "activation_sparsity": s2_by_linear.get(n)} for n, v in report["per_linear"].items()},
            "ignored": report["ignored"],
            "sizes": sizes,
            "seconds": time.perf_counter() - started,
            "signature": signature(net),
            "environment": environment(),
            "warnings": found,
            "sha256": {f: sha256_file(tmp / f) for f in hashed},
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    progress("done", 1, 1)
    return ConvertOutcome(out=out, format=fmt, manifest=manifest, warnings=found)
