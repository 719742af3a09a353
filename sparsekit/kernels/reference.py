"""Plain-PyTorch definitions of every sparsekit op. Every backend is tested against these.

Conventions (shared by all backends; the schemas in csrc/ops.cpp mirror them):

- ``x`` is the input of a linear layer, shape ``[..., K]`` (any number of tokens ``T`` = prod of
  leading dims), dtype float16, bfloat16 or float32. Accumulation is float32; outputs are x's dtype.
- Activation masking keeps ``x`` where ``|x| > threshold`` (strictly greater) and zeroes the rest.
  ``threshold`` is a Python float (a constant per input site, so it can be baked into CUDA graphs).
  ``threshold <= 0`` still drops exact zeros, which changes nothing numerically.
- The *relative* rule (``mask_relative``, the calibrated default at the o_proj input, which no norm
  precedes) keeps ``x`` where ``|x| > threshold * mean(|x|)``, the mean taken over
  the token's own channels in float32. ``teal_matvec_rel`` / ``spdp_matvec_rel`` apply it fused (a
  CUDA kernel; the other backends mask in torch, then run the plain op with threshold 0).
- The *SwiGLU input* (``silu_mul``): ``gu`` of shape ``[..., 2K]`` holds a Llama MLP's stacked
  gate and up outputs; the down projection reads ``F.silu(gate) * up`` computed in gu's dtype, as
  the MLP computes it. ``teal_matvec_glu`` / ``spdp_matvec_glu`` take ``gu`` and fuse that product
  into the masked matvec (a CUDA kernel; the other backends compute it in torch, then the plain op).
- ``teal`` layout: the weight stored transposed, ``w_t = W.T`` with shape ``[K, N]`` row-major, so
  every input channel's column of ``W`` is contiguous (skipping channel j skips one row of w_t).
- ``spdp`` format: see ``sparsekit.formats.spdp`` (bitmaps per (row tile, input column)).
- ``spinfer`` format: see ``sparsekit.formats.spinfer`` (SpInfer's TCA-BME; no activation masking).
- ``rowdelta`` layout: see ``sparsekit.formats.rowdelta`` (rows of values and 4-bit column steps: the
  one-token path the runtime builds from a spinfer weight; no activation masking).
"""
from __future__ import annotations

import torch

__all__ = [
    "mask_activations",
    "token_scale",
    "mask_relative",
    "relative_magnitude",
    "select",
    "teal_matvec",
    "teal_matvec_sel",
    "teal_matvec_rel",
    "silu_mul",
    "teal_matvec_glu",
    "spdp_matvec",
    "spdp_matvec_sel",
    "spdp_matvec_rel",
    "spdp_matvec_glu",
    "spinfer_matmul",
    "rowdelta_matvec",
]


def mask_activations(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x where |x| > threshold, else 0 (same dtype and shape)."""
    return torch.where(x.abs() > threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))


def token_scale(x: torch.Tensor) -> torch.Tensor:
    """Each token's mean |x| over its channels (the last dim), float32, shape ``[..., 1]``."""
    return x.abs().float().mean(-1, keepdim=True)


def mask_relative(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x where |x| > threshold * token_scale(x) (compared in float32), else 0 (same dtype and shape)."""
    keep = x.abs().float() > threshold * token_scale(x)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def relative_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|x| / token_scale(x) in float32 (0 for an all-zero token): the statistic relative thresholds are read from."""
    scale = token_scale(x)
    return x.abs().float() / torch.where(scale > 0, scale, torch.ones_like(scale))


def select(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Active-channel selection, computed once per input site and shared by the matrices reading it.

    Returns ``(xs, idx, nnz)``:
    - ``xs``: ``mask_activations(x, threshold)``, shape and dtype of x;
    - ``idx``: int32 ``[K]``; ``idx[:nnz]`` are the channels active in ANY token (the union over all
      leading dims), ascending; entries past ``nnz`` are unspecified;
    - ``nnz``: int32 ``[1]`` on x's device, the number of active channels (no host sync needed).
    """
    xs = mask_activations(x, threshold)
    k = x.shape[-1]
    active = (xs.reshape(-1, k) != 0).any(dim=0)
    ids = torch.nonzero(active, as_tuple=False).flatten().to(torch.int32)
    idx = torch.full((k,), k, dtype=torch.int32, device=x.device)
    idx[: ids.numel()] = ids
    nnz = torch.tensor([ids.numel()], dtype=torch.int32, device=x.device)
    return xs, idx, nnz


def teal_matvec(x: torch.Tensor, w_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """``y = mask_activations(x, threshold) @ w_t``; x ``[..., K]``, w_t ``[K, N]`` -> y ``[..., N]``."""
    _check_teal(x, w_t)
    xs = mask_activations(x, threshold)
    return (xs.float() @ w_t.float()).to(x.dtype)


def teal_matvec_rel(x: torch.Tensor, w_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """The relative rule fused: ``teal_matvec(mask_relative(x, threshold), w_t, 0)``."""
    return teal_matvec(mask_relative(x, threshold), w_t, 0.0)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` in gu's dtype, where ``gate, up = gu[..., :K], gu[..., K:]`` (``gu``: ``[..., 2K]``)."""
    gate, up = glu_halves(gu)
    return torch.nn.functional.silu(gate) * up


def teal_matvec_glu(gu: torch.Tensor, w_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """The SwiGLU input fused: ``teal_matvec(silu_mul(gu), w_t, threshold)``."""
    return teal_matvec(silu_mul(gu), w_t, threshold)


def teal_matvec_sel(xs: torch.Tensor, idx: torch.Tensor, nnz: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """The same product from a precomputed ``select``: ``y = sum_{j in idx[:nnz]} xs[..., j] * w_t[j]``."""
    _check_teal(xs, w_t)
    n = int(nnz.reshape(-1)[0])
    cols = idx[:n].long()
    return (xs[..., cols].float() @ w_t[cols].float()).to(xs.dtype)


def spdp_matvec(x: torch.Tensor, packed: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
    """``y = mask_activations(x, threshold) @ W.T`` with W stored in the spdp format."""
    from sparsekit.formats import spdp

    w = spdp.decode(packed)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {w.shape[1]} inputs")
    xs = mask_activations(x, threshold)
    return (xs.float() @ w.float().T).to(x.dtype)


def spdp_matvec_rel(x: torch.Tensor, packed: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
    """The relative rule fused: ``spdp_matvec(mask_relative(x, threshold), packed, 0)``."""
    return spdp_matvec(mask_relative(x, threshold), packed, 0.0)


def spdp_matvec_glu(gu: torch.Tensor, packed: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
    """The SwiGLU input fused: ``spdp_matvec(silu_mul(gu), packed, threshold)``."""
    return spdp_matvec(silu_mul(gu), packed, threshold)


def spdp_decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense ``[N, K]`` weight of an spdp-packed one, bit for bit."""
    from sparsekit.formats import spdp

    return spdp.decode(packed)


def spdp_matvec_sel(xs: torch.Tensor, idx: torch.Tensor, nnz: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """spdp product from a precomputed ``select`` (only the columns in ``idx[:nnz]`` are read)."""
    from sparsekit.formats import spdp

    w = spdp.decode(packed)
    n = int(nnz.reshape(-1)[0])
    cols = idx[:n].long()
    return (xs[..., cols].float() @ w[:, cols].float().T).to(xs.dtype)


def spinfer_matmul(x: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """``y = x @ W.T`` with W stored in the spinfer format (every channel of x is used)."""
    from sparsekit.formats import spinfer

    w = spinfer.decode(packed)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {w.shape[1]} inputs")
    return (x.float() @ w.float().T).to(x.dtype)


def rowdelta_matvec(x: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """``y = x @ W.T`` with W stored in the rowdelta layout (every channel of x is used)."""
    from sparsekit.formats import rowdelta

    w = rowdelta.decode(packed)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {w.shape[1]} inputs")
    return (x.float() @ w.float().T).to(x.dtype)


def _check_teal(x: torch.Tensor, w_t: torch.Tensor, glu: bool = False) -> None:
    """x [..., K] (glu: the stacked gate/up [..., 2K]) for w_t [K, N], else one ValueError sentence."""
    want = (2 if glu else 1) * w_t.shape[0] if w_t.dim() == 2 else -1
    if x.shape[-1] != want:
        raise ValueError(f"x has {x.shape[-1]} channels but w_t has shape {tuple(w_t.shape)} "
                         f"(expected x [..., {'2K' if glu else 'K'}] for w_t [K, N])")


def glu_halves(gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate, up)`` of a stacked gate/up tensor ``[..., 2K]`` (ValueError for an odd width)."""
    if gu.shape[-1] % 2:
        raise ValueError(f"gu must hold the gate and up halves, got an odd width {gu.shape[-1]}")
    return gu.chunk(2, dim=-1)
