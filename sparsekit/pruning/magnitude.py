"""Magnitude pruning: score |W_ij|, no calibration data."""
from __future__ import annotations

import torch

from sparsekit.pruning.masks import select_mask


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """True where ``weight`` ``[out, in]`` is zeroed (see ``masks`` for the exact rule)."""
    return select_mask(magnitude_scores(weight), sparsity, nm)
