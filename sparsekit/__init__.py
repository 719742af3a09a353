"""sparsekit: faster LLM decoding from weight sparsity x activation sparsity.

Importing this package is cheap (it does not import torch), so the command line stays fast.
Heavy pieces load on first use:

- ``sparsekit.load(dir, device=...)`` loads a converted model with SparseLinear layers;
- ``sparsekit.ops`` holds the kernels (compiled extension, Triton, or the PyTorch reference);
- when ``transformers`` is (or gets) imported, the ``sparsekit`` HfQuantizer is registered, so
  ``AutoModelForCausalLM.from_pretrained(converted_dir)`` builds SparseLinear layers.
"""
from __future__ import annotations

__version__ = "0.1.0"

from sparsekit import _hooks

_hooks.install()

__all__ = ["__version__", "load", "ops"]


def __getattr__(name: str):
    if name == "ops":
        import importlib

        return importlib.import_module("sparsekit.ops")
    if name == "load":
        from sparsekit.runtime.load import load

        return load
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
