"""Triton rowdelta matvec (layout: ``sparsekit.formats.rowdelta``): ``y = x @ W.T``.

One program per (row, token) walks the row ``BLOCK_V`` vectors (8 entries each) at a time: every
entry's 4-bit step is unpacked from its vector's word, ``tl.cumsum`` turns the steps into columns
(plus the row's column so far), and the values meet x gathered at those columns. fp32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekit.kernels.triton import common


@triton.jit
def _rowdelta_kernel(x_ptr, val_ptr, d_ptr, ro_ptr, out_ptr, K, N, stride_xt, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    t = tl.program_id(1)
    v0 = tl.load(ro_ptr + row)
    v1 = tl.load(ro_ptr + row + 1)
    e = tl.arange(0, BLOCK_V * 8)
    j = e % 8
    shift = tl.where(j < 4, 8 * j, 8 * (j - 4) + 4)
    acc = tl.zeros((BLOCK_V * 8,), dtype=tl.float32)
    carry = tl.zeros((), dtype=tl.int64)
    for base in range(v0, v1, BLOCK_V):
        vec = base + e // 8
        ok = vec < v1
        word = tl.load(d_ptr + vec, mask=ok, other=0).to(tl.int64) & 0xFFFFFFFF
        step = (word >> shift.to(tl.int64)) & 15
        cols = carry + tl.cumsum(step, 0)
        carry += tl.sum(step, 0)
        vals = tl.load(val_ptr + vec.to(tl.int64) * 8 + j, mask=ok, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + t * stride_xt + cols, mask=ok & (cols < K), other=0.0).to(tl.float32)
        acc += vals * xv
    tl.store(out_ptr + t * N + row, tl.sum(acc, 0).to(out_ptr.dtype.element_ty))


def rowdelta_matvec(x, values, deltas, row_offsets, n: int, k: int) -> torch.Tensor:
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {k} inputs")
    if row_offsets.numel() != n + 1 or values.numel() != 8 * deltas.numel():
        raise ValueError(f"rowdelta tensors do not match n={n}")
    x2 = x.reshape(-1, k)
    t = x2.shape[0]
    out = common.out_buffer(t, n, x)
    if t == 0 or n == 0:
        return common.finish(out, x)
    if k == 0:
        return common.finish(out.zero_(), x)
    x2, values, _ = common.operands(x2, values.reshape(-1))
    _rowdelta_kernel[(n, t)](x2, values, deltas.reshape(-1), row_offsets.reshape(-1), out, k, n, x2.stride(0),
                             BLOCK_V=32, num_warps=4)
    return common.finish(out, x)
