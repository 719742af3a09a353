"""Activation sparsity (TEAL): histograms of linear inputs, thresholds for any S2, greedy allocation.

- ``calibrate_model(model, samples, device=..., greedy=False) -> Calibration``
- ``Calibration.save(dir)`` / ``Calibration.load(dir, model=None)`` / ``Calibration.thresholds(s2, greedy)``
- ``apply_thresholds(model, thresholds, prefill="all") -> handle`` and ``measure_sparsity(...)``;
  ``Thresholds`` (a dict name -> t whose ``relative`` names use |x| > t * mean|x|)

Names load on first use, so ``sparsekit.activation.run`` can check its arguments before torch is imported.
"""
from __future__ import annotations

import importlib

_WHERE = {"Calibration": "thresholds", "calibrate_model": "calibrate", "apply_thresholds": "sparsify",
          "measure_sparsity": "sparsify", "Thresholds": "sparsify"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"sparsekit.activation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sparsekit.activation' has no attribute {name!r}")
