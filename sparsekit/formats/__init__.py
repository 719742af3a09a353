"""Weight formats: one module per format (``encode``/``decode``/``KEYS``); see DESIGN.md section 4."""
from __future__ import annotations

import torch

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def packed_shape(packed: dict) -> tuple[int, ...]:
    """A packed weight's ``shape`` entry as ints: a tensor (kept on the CPU, so no device sync) or a
    sequence (what ``SparseLinear.packed`` hands out, so ``torch.compile`` sees constants)."""
    shape = packed["shape"]
    return tuple(int(v) for v in (shape.tolist() if hasattr(shape, "tolist") else shape))


def nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """Where ``t`` holds a non-zero bit pattern (floats: ``-0.0`` and NaN count as non-zero), as bool."""
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point():
        return t.view(_INT_VIEW[t.element_size()]) != 0
    return t != 0
