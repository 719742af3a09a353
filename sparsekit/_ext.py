"""Loads the compiled library ``sparsekit._C`` (built by setup.py) once.

``load()`` returns the module, or None when it is not built, fails to load, or env
``SPARSEKIT_SKIP_EXT=1`` asks to ignore it; in those cases exactly one warning is issued and the
ops fall back to Triton or the PyTorch reference. ``has_cuda()`` says whether the library was
compiled with the CUDA kernels.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType

_UNSET = object()
_module: object = _UNSET
reason: str | None = None  # why the library is not used (None when it is)


def load() -> ModuleType | None:
    global _module, reason
    if _module is not _UNSET:
        return _module  # type: ignore[return-value]
    if os.environ.get("SPARSEKIT_SKIP_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
        _module, reason = None, "SPARSEKIT_SKIP_EXT is set"
    else:
        try:
            import torch  # noqa: F401  (the library links against torch's)

            from sparsekit import _C  # type: ignore[attr-defined]

            _module = _C
        except ImportError as exc:
            _module, reason = None, f"it is not built or failed to load ({exc})"
    if _module is None:
        warnings.warn(
            f"sparsekit: compiled kernels are not used because {reason}; ops fall back to Triton or the "
            "PyTorch reference (build them with `pip install --no-build-isolation -e .`).",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module  # type: ignore[return-value]


def has_cuda() -> bool:
    mod = load()
    return bool(mod is not None and getattr(mod, "WITH_CUDA", 0))
