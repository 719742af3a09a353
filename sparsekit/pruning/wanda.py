"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2.

``||X_j||_2`` is the L2 norm of input channel j over every calibration token, accumulated in
float32 as a sum of squares (``InputNorms``); the mask rule is in ``masks``.

With N:M-out the groups run down one input column, where ``||X_j||`` is a common factor, so
Wanda ranks the same ``|W_ij|`` as magnitude does and picks the same mask (up to float32
rounding of the products, which can turn two close scores into a tie).
"""
from __future__ import annotations

import torch

from sparsekit.pruning.masks import select_mask


class InputNorms:
    """Running per-channel sum of squares of a linear's input, in float32."""

    def __init__(self, features: int, device: torch.device):
        self.sumsq = torch.zeros(features, dtype=torch.float32, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """``x``: ``[tokens, features]`` in any float dtype."""
        xf = x.float()
        self.sumsq += (xf * xf).sum(dim=0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        return self.sumsq.sqrt()


def wanda_scores(weight: torch.Tensor, channel_norms: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||`` in float32, ``[out, in]``."""
    return weight.detach().float().abs() * channel_norms.to(weight.device, torch.float32).unsqueeze(0)


@torch.no_grad()
def wanda_mask(weight: torch.Tensor, channel_norms: torch.Tensor, sparsity: float,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """True where ``weight`` ``[out, in]`` is zeroed."""
    return select_mask(wanda_scores(weight, channel_norms), sparsity, nm)
