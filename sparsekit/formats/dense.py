"""The ``dense`` weight format: the weight as it is, zeros included (a plain HF checkpoint).

Sparsity is only recorded as metadata (in ``sparsekit.json``), so the tensor is named
``<linear>.weight`` exactly as in an ordinary Hugging Face checkpoint.
"""
from __future__ import annotations

import torch

KEYS = ("weight",)
FLOAT_KEYS = ("weight",)


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"dense encodes 2-D weights, got shape {tuple(weight.shape)}")
    return {"weight": weight.detach().contiguous()}


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    return packed["weight"]


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values())
