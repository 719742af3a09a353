"""Triton teal matvec: ``y = xs[:, idx[:nnz]] @ w_t[idx[:nnz]]`` reading only active rows of w_t.

Each program owns a tile of output columns (``BLOCK_N`` of N) for ``BLOCK_T`` tokens and walks the
active-channel list ``BLOCK_K`` channels at a time (``nnz`` is read on the device: no host sync, so
the launch can be captured in a CUDA graph). There are no atomics: when the output tiles alone give
too few programs, the channel list is cut into ``split`` ranges whose fp32 partial sums go to a
workspace and a second kernel adds them in a fixed order (deterministic, any dtype).
One token uses a broadcast-multiply-sum; several use ``tl.dot`` (fp32 inputs in IEEE precision).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekit.kernels.triton import common


@triton.jit
def _teal_kernel(
    xs_ptr, idx_ptr, nnz_ptr, w_ptr, out_ptr, ws_ptr,
    T, N, stride_xt,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, USE_DOT: tl.constexpr, W_TO_F32: tl.constexpr, F32_DOT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_s = tl.program_id(2)
    nnz = tl.load(nnz_ptr)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    per = tl.cdiv(tl.cdiv(nnz, SPLIT), BLOCK_K) * BLOCK_K
    c_begin = pid_s * per
    c_end = tl.minimum(c_begin + per, nnz)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for c0 in range(c_begin, c_end, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        mask_c = offs_c < c_end
        j = tl.load(idx_ptr + offs_c, mask=mask_c, other=0).to(tl.int64)
        x = tl.load(xs_ptr + offs_t[:, None] * stride_xt + j[None, :], mask=mask_t[:, None] & mask_c[None, :], other=0.0)
        w = tl.load(w_ptr + j[:, None] * N + offs_n[None, :], mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        if W_TO_F32:
            w = w.to(tl.float32)
        if USE_DOT:
            if F32_DOT:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
        else:
            acc += tl.sum(x.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
    common.store_tile(acc, out_ptr, ws_ptr, offs_t, offs_n, mask_t, mask_n, T, N, pid_s, SPLIT)


def teal_matvec_sel(xs: torch.Tensor, idx: torch.Tensor, nnz: torch.Tensor, w_t: torch.Tensor, split: int | None = None) -> torch.Tensor:
    k, n = w_t.shape
    if xs.shape[-1] != k:
        raise ValueError(f"x has {xs.shape[-1]} channels but w_t has shape {tuple(w_t.shape)} (expected [K, N])")
    x2 = xs.reshape(-1, k)
    t = x2.shape[0]
    out = common.out_buffer(t, n, xs)
    if t == 0 or n == 0:
        return common.finish(out, xs)
    x2, w_t, w_to_f32 = common.operands(x2, w_t.contiguous())
    cfg = common.config(t, n, k, split, device=xs.device)
    ws = common.workspace(cfg, t, n, xs.device)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(t, cfg.block_t), cfg.split)
    _teal_kernel[grid](
        x2, idx.reshape(-1), nnz.reshape(-1), w_t, out, ws, t, n, x2.stride(0),
        BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n,
        SPLIT=cfg.split, USE_DOT=cfg.use_dot, W_TO_F32=w_to_f32, F32_DOT=x2.dtype == torch.float32,
        num_warps=cfg.num_warps,
    )
    common.reduce_splits(ws, out, cfg)
    return common.finish(out, xs)


def teal_matvec(x: torch.Tensor, w_t: torch.Tensor, threshold: float, split: int | None = None) -> torch.Tensor:
    xs, idx, nnz = common.select(x, threshold)
    return teal_matvec_sel(xs, idx, nnz, w_t, split)
