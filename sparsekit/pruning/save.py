"""Write a pruned model: a normal HF checkpoint (dense safetensors with zeros) + ``sparsekit.json``."""
from __future__ import annotations

from pathlib import Path

from sparsekit.formats.checkpoint import MANIFEST, atomic_dir, check_out_dir, tensor_hashes, write_json_atomic

KIND = "prune"


def save_pruned(model, tokenizer, out: Path, report, settings: dict) -> dict:
    """Write ``out`` atomically; return the manifest.

    ``settings``: what the user asked for (model, method, sparsity, structure, calibration source,
    nsamples, seqlen, seed, ignore, dtype, ...); merged with the report's achieved sparsity, the
    package versions and the sha256 of every tensor file into ``sparsekit.json`` (kind "prune").
    """
    from sparsekit.env import environment
    from sparsekit.models import signature

    out = Path(out)
    check_out_dir(out, KIND)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        result = report.as_dict() if hasattr(report, "as_dict") else dict(report)
        manifest = {
            "kind": KIND,
            **settings,
            "achieved": {
                "overall": result["overall"],
                "per_layer": result["per_layer"],
                "per_linear": result["per_linear"],
            },
            "ignored": result.get("ignored", []),
            "peak_device_bytes": result.get("peak_device_bytes"),
            "seconds": result.get("seconds"),
            "signature": signature(model),
            "environment": environment(),
            "sha256": tensor_hashes(tmp),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest
