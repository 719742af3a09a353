"""The ``rowdelta`` layout: unstructured sparse rows for one-token products (``ops.rowdelta_matvec``).

Not a file format: the runtime builds it on the GPU from a ``spinfer`` weight (``encode(decode(...))``)
so a decode step of an unstructured-sparse model reads about ``2.5 * nnz`` bytes with per-non-zero
work. SpInfer's bitmaps cost work per *position* (a popcount and a load for every 2 bits), which at
the H100's bandwidth per SM cycle is as slow as reading the dense weight; here a warp loads 8 values
and their 8 column steps per lane in two vector loads and finds every column with one byte-wise
multiply and a warp scan.

A weight ``W`` of shape ``[N, K]`` (out, in) is stored row by row. Each row is a run of *entries*,
each a value and a column step ``d`` in ``0..15``: entry ``i`` of a row sits at column
``col_i = d_0 + ... + d_i``. The row's non-zeros are its entries in column order (the first at
``d_0 = col``); a gap of more than 15 columns gets *filler* entries (``d = 15``, value 0) before it,
and the run is padded with ``d = 0``, value-0 entries to a multiple of 8, so every row starts
16-byte aligned in fp16/bf16. Columns therefore stay inside ``0..K-1`` for every entry.

Stored tensors:

- ``values``: 1-D, W's dtype: the entries of every row, row after row;
- ``deltas``: int32 ``[len(values) // 8]``: the steps of entries ``8v .. 8v+7``, packed so that a
  byte-wise multiply gives their running sums: entry ``8v + j`` (j < 4) in bits ``8j .. 8j+3``,
  entry ``8v + 4 + j`` in bits ``8j+4 .. 8j+7``;
- ``row_offsets``: int32 ``[N + 1]``: row ``r``'s entries are ``8*row_offsets[r] .. 8*row_offsets[r+1]``;
- ``shape``: int64 ``[2]`` = ``[N, K]`` on the CPU.

"Non-zero" means a non-zero bit pattern (``-0.0`` and NaN kept), so ``decode(encode(W))`` is ``W``
bit for bit. ``rowdelta_matvec(x, packed) = x @ W.T``.
"""
from __future__ import annotations

import torch

from sparsekit.formats import nonzero_bits, packed_shape

KEYS = ("values", "deltas", "row_offsets", "shape")
VEC = 8  # entries per vector (one 16-byte load of 16-bit values)
MAX_STEP = 15


def dims(packed: dict) -> tuple[int, int]:
    n, k = packed_shape(packed)
    return n, k


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pack a 2-D weight (on its device; a GPU packs a 7B projection in milliseconds)."""
    if weight.dim() != 2:
        raise ValueError(f"rowdelta encodes 2-D weights, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    w = weight.detach()
    dev = w.device
    rows, cols = nonzero_bits(w).nonzero(as_tuple=True)  # row-major order
    # the step from the previous non-zero of the row (from column 0 for the first)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    prev = torch.zeros_like(cols)
    prev[1:] = cols[:-1]
    gap = cols - torch.where(first, torch.zeros_like(prev), prev)
    fillers = torch.clamp((gap + MAX_STEP - 1) // MAX_STEP - 1, min=0)  # entries of step 15 before it
    per = fillers + 1  # entries each non-zero takes
    counts = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, rows, per)
    vecs = (counts + VEC - 1) // VEC
    row_offsets = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    row_offsets[1:] = torch.cumsum(vecs, 0)
    total = int(row_offsets[-1]) * VEC
    if total // VEC >= 2**31:
        raise ValueError("weight has too many non-zeros for int32 row offsets")
    # position of each non-zero: its row's start + the entries of the row before it (fillers included)
    within = torch.cumsum(per, 0) - 1
    row_base = torch.zeros(n, dtype=torch.int64, device=dev)
    row_base[1:] = torch.cumsum(counts, 0)[:-1]  # entries before the row in the unpadded sequence
    pos = row_offsets[rows] * VEC + within - row_base[rows]
    values = torch.zeros(total, dtype=w.dtype, device=dev)
    steps = torch.zeros(total, dtype=torch.int64, device=dev)
    values[pos] = w[rows, cols]
    steps[pos] = gap - MAX_STEP * fillers
    if bool((fillers > 0).any()):
        f_pos = torch.repeat_interleave(pos, fillers)
        f_rank = torch.arange(f_pos.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(fillers, 0) - fillers, fillers)
        f_count = torch.repeat_interleave(fillers, fillers)
        steps[f_pos - f_count + f_rank] = MAX_STEP
    s = steps.reshape(-1, 2, 4)  # [vectors, half, j]: entry 4*half + j
    shifts = torch.arange(4, device=dev, dtype=torch.int64) * 8
    packed = ((s[:, 0] << shifts) | (s[:, 1] << (shifts + 4))).sum(-1)
    deltas = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return {
        "values": values,
        "deltas": deltas,
        "row_offsets": row_offsets.to(torch.int32),
        "shape": torch.tensor([n, k], dtype=torch.int64),
    }


def steps(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The column step of every entry (int64, ``len(values)``), unpacked from ``deltas``."""
    d = packed["deltas"].to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(4, device=d.device, dtype=torch.int64) * 8
    lo = (d[:, None] >> shifts) & 15
    hi = (d[:, None] >> (shifts + 4)) & 15
    return torch.cat([lo, hi], dim=1).reshape(-1)


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    n, k = dims(packed)
    values = packed["values"]
    dev = values.device
    ro = packed["row_offsets"].to(device=dev, dtype=torch.int64)
    if ro.numel() != n + 1 or packed["deltas"].numel() * VEC != values.numel() or int(ro[-1]) * VEC != values.numel():
        raise ValueError(f"rowdelta tensors do not match shape {[n, k]}")
    out = torch.zeros((n, k), dtype=values.dtype, device=dev)
    if values.numel() == 0:
        return out
    st = steps(packed).to(dev)
    row_of = torch.repeat_interleave(torch.arange(n, device=dev), (ro[1:] - ro[:-1]) * VEC)
    run = torch.cumsum(st, 0)
    starts = ro[:-1] * VEC
    before = torch.where(starts > 0, run[(starts - 1).clamp(min=0)], torch.zeros_like(starts))
    cols = run - before[row_of]
    if cols.numel() and (int(cols.max()) >= max(k, 1) or int(cols.min()) < 0):
        raise ValueError("rowdelta steps run past the last column")
    keep = nonzero_bits(values)
    out[row_of[keep], cols[keep]] = values[keep]
    return out


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values() if isinstance(t, torch.Tensor))
