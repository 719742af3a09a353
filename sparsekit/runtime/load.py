"""``sparsekit.load(dir, device=...)``: a converted model with SparseLinear layers, in one call."""
from __future__ import annotations

from pathlib import Path

import torch

from sparsekit.errors import BadInput, Failure


def load(directory, device: str | torch.device = "auto", dtype=None):
    """Load a ``sparsekit convert`` output as ``(model, tokenizer)`` (tokenizer None if not saved).

    Every file's sha256 is checked against ``sparsekit.json`` first (BadInput if one is missing,
    truncated or modified); the packed weights are read straight into SparseLinear buffers.
    ``dtype`` None (or "auto") keeps the dtype the weights were stored in (so the packed weights
    decode bit for bit); otherwise float16 / bfloat16 / float32.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import sparsekit  # noqa: F401  (registers the HfQuantizer)
    from sparsekit.formats.hf_quantizer import check_dir, mark_verified
    from sparsekit.models import check_supported, resolve_device, resolve_dtype

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise BadInput(f"{directory} is not a directory.")
    if not (d / "config.json").is_file():
        raise BadInput(f"{directory} holds no config.json, so it is not a model directory.")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    check_dir(d)  # sha256 of every file, before anything is read
    config = AutoConfig.from_pretrained(d)
    check_supported(config)
    qc = getattr(config, "quantization_config", None)
    if not qc or (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)) != "sparsekit":
        raise BadInput(f"{directory} is not a converted sparsekit model (config.json has no sparsekit quantization_config).")
    if dtype is None or getattr(dtype, "value", dtype) == "auto":
        torch_dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype)
    else:
        torch_dtype = resolve_dtype(dtype, dev)
    # straight onto the device where accelerate is there to place it, else through the CPU
    placement = {"device_map": {"": str(dev)}} if dev.type != "cpu" and _has_accelerate() else {}
    mark_verified(d)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype, **placement)
    except OSError as exc:
        raise Failure(f"could not load {directory}: {str(exc).splitlines()[0]}") from exc
    finally:
        mark_verified(None)
    model.to(dev)
    model.eval()
    tokenizer = None
    from sparsekit.formats.convert import TOKENIZER_FILES

    if any((d / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(d)
    return model, tokenizer


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None
