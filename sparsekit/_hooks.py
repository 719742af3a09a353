"""Register sparsekit with transformers without importing transformers (or torch) ourselves.

If transformers is already imported, register now. Otherwise install a one-shot import hook that
registers right after transformers finishes importing, whatever the user's import order.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_done = False


def _register() -> None:
    global _done
    if _done:
        return
    _done = True
    try:
        from sparsekit.formats.hf_quantizer import register
    except ImportError:  # the runtime is not built yet
        return
    register()


class _AfterTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register()

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
