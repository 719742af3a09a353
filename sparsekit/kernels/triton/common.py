"""Pieces shared by the Triton kernels: launch configuration, the split-K workspace and its
deterministic reduction, the operand dtypes, and ``select`` (device-side, no host sync)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Config:
    block_t: int
    block_k: int
    block_n: int
    split: int
    use_dot: bool
    num_warps: int


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def config(t: int, n: int, k: int, split: int | None, block_n: int | None = None, device: torch.device | None = None) -> Config:
    """Tiles for T tokens, N outputs, K channels; ``split`` None = enough programs for the GPU."""
    use_dot = t > 1
    block_t = 16 if use_dot else 1
    block_k = 32
    if block_n is None:
        block_n = 64 if use_dot else 128
    if split is None:
        split = 1
        if device is not None and device.type == "cuda":
            programs = triton.cdiv(n, block_n) * triton.cdiv(t, block_t)
            want = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
            split = max(1, min(-(-want // programs), k // (4 * block_k), 32))
    return Config(block_t, block_k, block_n, max(1, int(split)), use_dot, 4)


def workspace(cfg: Config, t: int, n: int, device: torch.device) -> torch.Tensor:
    if cfg.split == 1:
        return torch.empty(1, dtype=torch.float32, device=device)  # unused
    return torch.empty((cfg.split, t, n), dtype=torch.float32, device=device)


def operands(x2: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Same dtype on both sides of tl.dot: mixed inputs are computed in fp32.

    Under the CPU interpreter bf16 ``tl.dot`` and bf16 stores are wrong (numpy has no bf16), so
    there bf16 is computed in fp32 too (see ``out_buffer``); on the GPU bf16 runs natively.
    """
    x2 = x2.contiguous()
    if x2.dtype == w.dtype and not (_interpreted(x2) and x2.dtype == torch.bfloat16):
        return x2, w, False
    return x2.float(), w, True


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def out_buffer(t: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """The kernel's output buffer (fp32 for bf16 under the interpreter, cast by ``finish``)."""
    dtype = torch.float32 if _interpreted(like) and like.dtype == torch.bfloat16 else like.dtype
    return torch.empty((t, n), dtype=dtype, device=like.device)


def finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n = out.shape[-1]
    return out.to(like.dtype).reshape(*like.shape[:-1], n)


@triton.jit
def store_tile(acc, out_ptr, ws_ptr, offs_t, offs_n, mask_t, mask_n, T, N, pid_s, SPLIT: tl.constexpr):
    mask = mask_t[:, None] & mask_n[None, :]
    if SPLIT == 1:
        ptrs = out_ptr + offs_t[:, None].to(tl.int64) * N + offs_n[None, :]
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        ptrs = ws_ptr + (pid_s * T + offs_t[:, None]).to(tl.int64) * N + offs_n[None, :]
        tl.store(ptrs, acc, mask=mask)


@triton.jit
def _reduce_kernel(ws_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # fixed order: deterministic
        acc += tl.load(ws_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def reduce_splits(ws: torch.Tensor, out: torch.Tensor, cfg: Config) -> None:
    if cfg.split == 1:
        return
    numel = out.numel()
    block = 1024
    _reduce_kernel[(triton.cdiv(numel, block),)](ws, out, numel, SPLIT=cfg.split, BLOCK=block)


def select(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``reference.select`` with device ops only (no host sync: capturable in a CUDA graph)."""
    k = x.shape[-1]
    xs = torch.where(x.abs() > threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))
    active = (xs.reshape(-1, k) != 0).any(dim=0)
    pos = torch.cumsum(active, 0, dtype=torch.int32) - 1
    slot = torch.where(active, pos.long(), torch.full_like(pos, k, dtype=torch.long))
    idx = torch.full((k + 1,), k, dtype=torch.int32, device=x.device)
    idx.scatter_(0, slot, torch.arange(k, dtype=torch.int32, device=x.device))
    idx.narrow(0, k, 1).fill_(k)  # (idx[k] = k would copy from the host: not capturable)
    nnz = (pos[-1:] + 1) if k > 0 else torch.zeros(1, dtype=torch.int32, device=x.device)
    return xs, idx[:k], nnz.to(torch.int32)
