"""Triton spdp matvec (format: ``sparsekit.formats.spdp``), reading only active tile columns.

Each program owns one row tile (``R`` output rows) for ``BLOCK_T`` tokens and walks the active
channels ``BLOCK_C`` at a time: it loads the tile column bitmaps, turns them into positions in the
packed values with an exclusive prefix sum of the bits (the popcount of the lower rows), gathers the
non-zeros into a dense ``[BLOCK_C, R]`` block and multiplies. No atomics; ``split`` as in teal.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekit.kernels.triton import common


@triton.jit
def _spdp_kernel(
    xs_ptr, idx_ptr, nnz_ptr, val_ptr, bm_ptr, off_ptr, out_ptr, ws_ptr,
    T, K, N, stride_xt,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SPLIT: tl.constexpr, USE_DOT: tl.constexpr, W_TO_F32: tl.constexpr, F32_DOT: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_s = tl.program_id(2)
    nnz = tl.load(nnz_ptr)
    rows = tl.arange(0, R)
    offs_n = pid_r * R + rows
    mask_n = offs_n < N
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    word = rows // 32
    bit = rows % 32
    per = tl.cdiv(tl.cdiv(nnz, SPLIT), BLOCK_C) * BLOCK_C
    c_begin = pid_s * per
    c_end = tl.minimum(c_begin + per, nnz)
    tile_col0 = pid_r.to(tl.int64) * K
    acc = tl.zeros((BLOCK_T, R), dtype=tl.float32)
    for c0 in range(c_begin, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        j = tl.load(idx_ptr + offs_c, mask=mask_c, other=0).to(tl.int64)
        col = tile_col0 + j  # (tile, column) index
        words = tl.load(bm_ptr + col[:, None] * (R // 32) + word[None, :], mask=mask_c[:, None], other=0)
        bits = (words >> bit[None, :]) & 1
        pos = tl.cumsum(bits, axis=1) - bits
        base = tl.load(off_ptr + col, mask=mask_c, other=0).to(tl.int64)
        w = tl.load(val_ptr + base[:, None] + pos, mask=(bits != 0) & mask_c[:, None], other=0.0)  # [C, R]
        if W_TO_F32:
            w = w.to(tl.float32)
        x = tl.load(xs_ptr + offs_t[:, None] * stride_xt + j[None, :], mask=mask_t[:, None] & mask_c[None, :], other=0.0)
        if USE_DOT:
            if F32_DOT:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
        else:
            acc += tl.sum(x.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
    common.store_tile(acc, out_ptr, ws_ptr, offs_t, offs_n, mask_t, mask_n, T, N, pid_s, SPLIT)


def spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n: int, tile_rows: int, split: int | None = None) -> torch.Tensor:
    k = xs.shape[-1]
    nt = -(-n // tile_rows)
    if bitmap.numel() != nt * k * (tile_rows // 32) or offsets.numel() != nt * k + 1:
        raise ValueError(f"spdp tensors do not match n={n}, k={k}, tile_rows={tile_rows}")
    x2 = xs.reshape(-1, k)
    t = x2.shape[0]
    out = common.out_buffer(t, n, xs)
    if t == 0 or n == 0:
        return common.finish(out, xs)
    x2, values, w_to_f32 = common.operands(x2, values.reshape(-1))
    cfg = common.config(t, n, k, split, block_n=tile_rows, device=xs.device)
    ws = common.workspace(cfg, t, n, xs.device)
    grid = (nt, triton.cdiv(t, cfg.block_t), cfg.split)
    _spdp_kernel[grid](
        x2, idx.reshape(-1), nnz.reshape(-1), values, bitmap.reshape(-1), offsets.reshape(-1), out, ws,
        t, k, n, x2.stride(0),
        R=tile_rows, BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_k if cfg.use_dot else 16,
        SPLIT=cfg.split, USE_DOT=cfg.use_dot, W_TO_F32=w_to_f32, F32_DOT=x2.dtype == torch.float32,
        num_warps=cfg.num_warps,
    )
    common.reduce_splits(ws, out, cfg)
    return common.finish(out, xs)


def spdp_matvec(x, values, bitmap, offsets, n: int, tile_rows: int, threshold: float, split: int | None = None) -> torch.Tensor:
    xs, idx, nnz = common.select(x, threshold)
    return spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n, tile_rows, split)


@triton.jit
def _spdp_decode_kernel(val_ptr, bm_ptr, off_ptr, out_ptr, K, N, R: tl.constexpr, BLOCK_J: tl.constexpr):
    """Program (row tile r, columns j0..j0+BLOCK_J): scatter the tile's packed values into the
    dense ``[N, K]`` output (zeros where the bitmap is clear). Stores run along K: coalesced."""
    pid_r = tl.program_id(0)
    pid_j = tl.program_id(1)
    rows = tl.arange(0, R)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = offs_j < K
    col = pid_r.to(tl.int64) * K + offs_j  # (tile, column) index
    words = tl.load(bm_ptr + col[:, None] * (R // 32) + (rows // 32)[None, :], mask=mask_j[:, None], other=0)
    bits = (words >> (rows % 32)[None, :]) & 1
    pos = tl.cumsum(bits, axis=1) - bits
    base = tl.load(off_ptr + col, mask=mask_j, other=0).to(tl.int64)
    w = tl.load(val_ptr + base[:, None] + pos, mask=(bits != 0) & mask_j[:, None], other=0.0)  # [J, R]
    out_rows = pid_r.to(tl.int64) * R + rows
    tl.store(out_ptr + out_rows[None, :] * K + offs_j[:, None], w, mask=mask_j[:, None] & (out_rows < N)[None, :])


# columns per program and warps, by tile_rows (H200 sweep, benchmarks/NOTES.md: 64 columns x 4 warps
# for R = 32, 32 x 4 for R = 64; wider blocks and 8 warps were slower everywhere; R = 128 not swept)
DECODE_WARPS = 4


def _decode_block_j(tile_rows: int) -> int:
    return 64 if tile_rows == 32 else 32


def spdp_decode(values, bitmap, offsets, n: int, k: int, tile_rows: int,
                block_j: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """The dense ``[n, k]`` weight of an spdp-packed one (bit-exact, as ``formats.spdp.decode``).
    ``block_j`` / ``num_warps``: columns per program and warps (benchmarks sweep them)."""
    nt = -(-n // tile_rows)
    if bitmap.numel() != nt * k * (tile_rows // 32) or offsets.numel() != nt * k + 1:
        raise ValueError(f"spdp tensors do not match n={n}, k={k}, tile_rows={tile_rows}")
    out = torch.empty((n, k), dtype=values.dtype, device=values.device)
    if n == 0 or k == 0:
        return out
    block_j = block_j or _decode_block_j(tile_rows)
    _spdp_decode_kernel[(nt, triton.cdiv(k, block_j))](
        values.reshape(-1), bitmap.reshape(-1), offsets.reshape(-1), out, k, n,
        R=tile_rows, BLOCK_J=block_j, num_warps=num_warps or DECODE_WARPS,
    )
    return out
