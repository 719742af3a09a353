"""Weight formats: one module per format (``encode``/``decode``/``KEYS``); see DESIGN.md section 4."""
from __future__ import annotations


def packed_shape(packed: dict) -> tuple[int, ...]:
    """A packed weight's ``shape`` entry as ints: a tensor (kept on the CPU, so no device sync) or a
    sequence (what ``SparseLinear.packed`` hands out, so ``torch.compile`` sees constants)."""
    shape = packed["shape"]
    return tuple(int(v) for v in (shape.tolist() if hasattr(shape, "tolist") else shape))
