"""Helpers shared by the kernel tests."""
from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# max |y - ref| / max |ref| allowed: fp32 summation order; one rounding of the output otherwise
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == ref.dtype, (y.dtype, ref.dtype)
    assert torch.isfinite(y).all(), "output has non-finite elements"
    scale = float(ref.double().abs().max()) if ref.numel() else 0.0
    diff = float((y.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def weight(n: int, k: int, dtype, s1: float = 0.5, gen=None, device="cpu") -> torch.Tensor:
    w = torch.randn(n, k, generator=gen)
    if s1 > 0:
        w[torch.rand(n, k, generator=gen) < s1] = 0
    return w.to(dtype).to(device)


def threshold_for(x: torch.Tensor, s2: float) -> float:
    """0 -> keep all; 1 -> drop all; otherwise the s2-quantile of |x| (about s2 of x dropped)."""
    if s2 <= 0:
        return 0.0
    if s2 >= 1:
        return float(x.float().abs().max()) + 1.0
    return float(torch.quantile(x.float().abs().flatten().cpu(), s2))
