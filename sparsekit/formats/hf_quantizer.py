"""The ``sparsekit`` HfQuantizer: ``AutoModelForCausalLM.from_pretrained(converted_dir)`` builds the
model with ``SparseLinear`` layers and fills their packed tensors straight from the safetensors.

How (transformers 5.x; only API present in 5.17 and 5.23 is used):

1. ``_process_model_before_weight_loading`` runs while the model skeleton is still on the meta
   device. It checks every file's sha256 against ``sparsekit.json`` (BadInput, nothing loaded,
   if a file is missing, truncated or modified, or if the manifest is missing), reads the tensor
   names, shapes and dtypes from the safetensors headers (a few KB, no data) and replaces each
   decoder ``nn.Linear`` that has packed tensors by an empty ``SparseLinear`` whose buffers carry
   exactly the saved names. The dense weights are never materialised.
2. transformers' loader fills those buffers like any parameter (float values cast to the
   requested dtype; integer metadata kept as stored).
3. ``_process_model_after_weight_loading`` caches thresholds/shapes as Python values and links
   the shared selections of q/k/v and gate/up.

``register()`` is called by ``sparsekit._hooks`` as soon as transformers is imported.
"""
from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import torch
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from sparsekit.errors import BadInput

METHOD = "sparsekit"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}

# directories whose sha256 was just checked by sparsekit.load (so from_pretrained does not hash twice)
_verified = threading.local()


class SparsekitConfig(QuantizationConfigMixin):
    """``config.json``'s ``quantization_config`` of a converted dir (every key is kept as is)."""

    def __init__(self, format: str = "dense", quant_method: str = METHOD, **kwargs):
        self.quant_method = METHOD
        self.format = format
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Tensor name -> (shape, dtype) from a safetensors file's JSON header (reads no data)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise BadInput(f"{path} is truncated (no safetensors header).")
        (size,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path} has a corrupt safetensors header.") from exc
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise BadInput(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}.")
        out[name] = (tuple(info["shape"]), dtype)
    return out


def mark_verified(directory: Path | None) -> None:
    _verified.dir = None if directory is None else Path(directory).resolve()


def check_dir(directory: Path) -> dict:
    """The manifest of a converted dir, after checking every file's sha256 (BadInput otherwise)."""
    from sparsekit.formats.checkpoint import MANIFEST, read_manifest, verify

    d = Path(directory).resolve()
    if getattr(_verified, "dir", None) == d:
        manifest = read_manifest(d)
    else:
        if read_manifest(d) is None:
            raise BadInput(f"{d} has no {MANIFEST}, so it is not a complete 'sparsekit convert' output; refusing to load it.")
        manifest = verify(d)
    if manifest is None or manifest.get("kind") != "convert":
        raise BadInput(f"{d} is not a 'sparsekit convert' output ({MANIFEST} kind is {manifest and manifest.get('kind')!r}).")
    return manifest


class SparsekitHfQuantizer(HfQuantizer):
    """Loads ``sparsekit convert`` checkpoints (pre-packed only; it does not pack on the fly)."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model, **kwargs):
        from sparsekit.runtime.linear import FORMATS
        from sparsekit.runtime.patch import build_empty

        files = [Path(f) for f in (kwargs.get("checkpoint_files") or [])]
        if not files:
            raise BadInput("a sparsekit checkpoint must be loaded from its safetensors files.")
        check_dir(files[0].parent)
        fmt = self.quantization_config.format
        if fmt not in FORMATS:
            raise BadInput(f"config.json names sparsekit format {fmt!r}, which this sparsekit does not know.")
        tensors: dict = {}
        for f in files:
            tensors.update(read_header(f))
        try:
            self.converted = build_empty(model, fmt, tensors)
        except KeyError as exc:
            raise BadInput(f"the checkpoint lacks tensor {exc.args[0]} of the {fmt} format; the directory is incomplete.") from exc
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from sparsekit.runtime.patch import finalize

        finalize(model)
        return model

    def is_serializable(self, *args, **kwargs):
        return False  # only 'sparsekit convert' writes converted dirs (with their manifest)

    @property
    def is_trainable(self):
        return False


def register() -> None:
    """Register the config and quantizer under ``quant_method = "sparsekit"`` (idempotent)."""
    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(METHOD)(SparsekitConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(METHOD)(SparsekitHfQuantizer)
