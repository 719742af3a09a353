"""The ``teal`` weight format: the dense weight stored transposed, ``w_t = W.T`` ([K, N], row-major).

Every input channel's column of ``W`` is one contiguous row of ``w_t``, so a decode kernel that
skips inactive channels (TEAL activation sparsity) skips whole contiguous rows. This is the layout
the ``teal_matvec`` ops take (see ``sparsekit.kernels.reference``).
"""
from __future__ import annotations

import torch

KEYS = ("w_t",)
FLOAT_KEYS = ("w_t",)


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"teal encodes 2-D weights, got shape {tuple(weight.shape)}")
    return {"w_t": weight.detach().t().contiguous()}


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    return packed["w_t"].t().contiguous()


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values())
