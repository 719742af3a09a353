"""Triton spinfer matmul (format: ``sparsekit.formats.spinfer``): ``y = x @ W.T``.

Each program owns one 64-row group stripe for ``BLOCK_T`` tokens and walks its group tiles. A group
tile is decoded in registers: its 4 x 1024 elements in bitmap-bit order (tensor-core tile, bitmap
tile, bit) get their positions in the packed values from an exclusive prefix sum of the bits, are
gathered, and are permuted back to a dense 64 x 64 block that ``tl.dot`` consumes. No atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekit.kernels.triton import common


@triton.jit
def _spinfer_kernel(
    x_ptr, val_ptr, bm_ptr, toff_ptr, goff_ptr, out_ptr,
    T, K, N, GK, stride_xt,
    BLOCK_T: tl.constexpr, USE_DOT: tl.constexpr, W_TO_F32: tl.constexpr, F32_DOT: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_t = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_n = pid_r * 64 + tl.arange(0, 64)
    mask_n = offs_n < N
    tc = tl.arange(0, 4)
    e = tl.arange(0, 1024)  # element of a tensor-core tile in bitmap-bit order
    acc = tl.zeros((BLOCK_T, 64), dtype=tl.float32)
    for gc in range(0, GK):
        g = pid_r.to(tl.int64) * GK + gc
        g0 = tl.load(goff_ptr + g)
        g1 = tl.load(goff_ptr + g + 1)
        if g1 > g0:
            words = tl.load(bm_ptr + g * 64 + tc[:, None] * 16 + e[None, :] // 64)  # [4, 1024] int64
            bits = ((words >> (e[None, :] % 64).to(tl.int64)) & 1).to(tl.int32)
            pos = tl.cumsum(bits, axis=1) - bits
            start = g0 + tl.load(toff_ptr + g * 4 + tc)
            vals = tl.load(val_ptr + start[:, None].to(tl.int64) + pos, mask=bits != 0, other=0.0)
            # e = kc*128 + rh*64 + r*8 + c  ->  row = tc*16 + rh*8 + r, col = kc*8 + c
            w = tl.reshape(tl.permute(tl.reshape(vals, (4, 8, 2, 8, 8)), (0, 2, 3, 1, 4)), (64, 64))
            if W_TO_F32:
                w = w.to(tl.float32)
            cols = gc * 64 + tl.arange(0, 64)
            x = tl.load(x_ptr + offs_t[:, None] * stride_xt + cols[None, :], mask=mask_t[:, None] & (cols[None, :] < K), other=0.0)
            if USE_DOT:
                if F32_DOT:
                    acc += tl.dot(x, tl.trans(w), input_precision="ieee")
                else:
                    acc += tl.dot(x, tl.trans(w))
            else:
                acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    ptrs = out_ptr + offs_t[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


def spinfer_matmul(x, values, bitmaps, tile_offsets, group_offsets, n: int, k: int) -> torch.Tensor:
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {k} inputs")
    gr, gk = -(-n // 64), -(-k // 64)
    if bitmaps.numel() != gr * gk * 64 or group_offsets.numel() != gr * gk + 1 or tile_offsets.numel() != gr * gk * 4:
        raise ValueError(f"spinfer tensors do not match n={n}, k={k}")
    x2 = x.reshape(-1, k)
    t = x2.shape[0]
    out = common.out_buffer(t, n, x)
    if t == 0 or n == 0:
        return common.finish(out, x)
    x2, values, w_to_f32 = common.operands(x2, values.reshape(-1))
    block_t = 16 if t > 1 else 1
    grid = (gr, triton.cdiv(t, block_t))
    _spinfer_kernel[grid](
        x2, values, bitmaps.reshape(-1), tile_offsets.reshape(-1), group_offsets.reshape(-1), out,
        t, k, n, gk, x2.stride(0),
        BLOCK_T=block_t, USE_DOT=t > 1, W_TO_F32=w_to_f32, F32_DOT=x2.dtype == torch.float32, num_warps=8,
    )
    return common.finish(out, x)
