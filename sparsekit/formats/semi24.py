"""The ``2:4`` weight format: semi-structured sparsity, at most 2 non-zeros in every 4 inputs.

A weight ``W`` of shape ``[N, K]`` (``K`` divisible by 4) is cut along each row into groups of 4
consecutive inputs. Each group keeps exactly 2 positions: its non-zeros first, topped up with
zero positions when it has fewer than 2, then sorted ascending. Stored:

- ``values``: ``[N, K/2]``, W's dtype; ``values[r, 2g + i]`` is the value at the ``i``-th kept
  position of group ``g`` (possibly a stored zero);
- ``indices``: uint8 ``[N, ceil(K/8)]``; the kept positions (0..3 within the group), 2 bits each,
  little-endian: byte ``j`` of row ``r`` holds groups ``2j`` (bits 0-3) and ``2j + 1`` (bits 4-7),
  a group's first position in its low 2 bits and its second position in the next 2 bits;
- ``shape``: int64 ``[2]`` = ``[N, K]``.

``check`` refuses a weight that is not 2:4, naming the first offending group (row-major order).
``decode(encode(W))`` equals ``W``.
"""
from __future__ import annotations

import torch

from sparsekit.formats import packed_shape

KEYS = ("values", "indices", "shape")
FLOAT_KEYS = ("values",)


class NotTwoFour(ValueError):
    """The weight has a group of 4 inputs with more than 2 non-zeros (or K is not divisible by 4)."""


def check(weight: torch.Tensor, name: str = "weight") -> None:
    if weight.dim() != 2:
        raise NotTwoFour(f"{name}: 2:4 needs a 2-D weight, got shape {tuple(weight.shape)}.")
    n, k = weight.shape
    if k % 4:
        raise NotTwoFour(f"{name} has {k} inputs, which is not divisible by 4, so it cannot be 2:4.")
    counts = (weight.detach().reshape(n, k // 4, 4) != 0).sum(-1)
    bad = counts > 2
    if bool(bad.any()):
        first = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))
        row, group = divmod(first, k // 4)
        raise NotTwoFour(
            f"{name} is not 2:4: row {row}, inputs {4 * group}-{4 * group + 3} hold "
            f"{int(counts[row, group])} non-zeros (at most 2 allowed)."
        )


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    check(weight)
    w = weight.detach()
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    pos = torch.arange(4, device=w.device)
    # non-zeros sort first (key 0..3), zeros after (key 4..7); stable by position
    key = (groups == 0).to(torch.int64) * 4 + pos
    kept = torch.sort(torch.argsort(key, dim=-1)[..., :2], dim=-1).values  # [N, K/4, 2]
    values = torch.gather(groups, -1, kept).reshape(n, k // 2).contiguous()
    nib = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.int32)  # [N, K/4], 4 bits per group
    g = k // 4
    if g % 2:
        nib = torch.cat([nib, torch.zeros((n, 1), dtype=nib.dtype, device=nib.device)], dim=1)
    pairs = nib.reshape(n, -1, 2)
    indices = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return {
        "values": values,
        "indices": indices,
        "shape": torch.tensor([n, k], dtype=torch.int64, device=w.device),
    }


def kept_positions(indices: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 ``[N, ceil(K/8)]`` -> int64 ``[N, K/4, 2]``, the kept positions of every group."""
    n = indices.shape[0]
    b = indices.to(torch.int64)
    nib = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(n, -1)[:, : k // 4]
    return torch.stack([nib & 3, (nib >> 2) & 3], dim=-1)


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    n, k = packed_shape(packed)
    values = packed["values"]
    kept = kept_positions(packed["indices"].to(values.device), k)
    out = torch.zeros((n, k // 4, 4), dtype=values.dtype, device=values.device)
    out.scatter_(-1, kept, values.reshape(n, k // 4, 2))
    return out.reshape(n, k)


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values())
