"""The ``bitmask`` weight format: compressed-tensors' legacy ``sparse-bitmask`` layout.

For a weight ``W`` of shape ``[N, K]`` saved as ``<name>.<key>`` (``<name>`` = the module name,
as compressed-tensors' ``BitmaskCompressor`` writes it):

- ``compressed``: the non-zero values of ``W`` in row-major order, 1-D, W's dtype;
- ``bitmask``: uint8 ``[N, ceil(K / 8)]``; bit ``b`` (least significant first, i.e.
  ``numpy.packbits(..., bitorder="little")``) of byte ``j`` in row ``r`` is set when
  ``W[r, 8*j + b] != 0``; the bits past ``K`` in the last byte are zero;
- ``shape``: int64 ``[2]`` = ``[N, K]``;
- ``row_offsets``: int64 ``[N]``, the index in ``compressed`` where row ``r`` starts.

``decode(encode(W))`` equals ``W`` (zeros come back as +0.0).
"""
from __future__ import annotations

import torch

from sparsekit.formats import packed_shape

KEYS = ("compressed", "bitmask", "shape", "row_offsets")
FLOAT_KEYS = ("compressed",)

_BIT = 1 << torch.arange(8, dtype=torch.int32)


def pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[N, K]`` -> uint8 ``[N, ceil(K/8)]``, little-endian bits along each row."""
    n, k = mask.shape
    kb = -(-k // 8)
    padded = torch.zeros((n, kb * 8), dtype=torch.int32, device=mask.device)
    padded[:, :k] = mask
    return (padded.reshape(n, kb, 8) * _BIT.to(mask.device)).sum(-1).to(torch.uint8)


def unpack_rows(bits: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 ``[N, ceil(K/8)]`` -> bool ``[N, K]`` (inverse of ``pack_rows``)."""
    n = bits.shape[0]
    b = (bits.to(torch.int32).unsqueeze(-1) & _BIT.to(bits.device)) != 0
    return b.reshape(n, -1)[:, :k]


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"bitmask encodes 2-D weights, got shape {tuple(weight.shape)}")
    w = weight.detach()
    nz = w != 0
    counts = nz.sum(dim=-1)
    return {
        "compressed": w[nz].contiguous(),
        "bitmask": pack_rows(nz),
        "shape": torch.tensor(list(w.shape), dtype=torch.int64, device=w.device),
        "row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64),
    }


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    n, k = packed_shape(packed)
    values = packed["compressed"]
    mask = unpack_rows(packed["bitmask"].to(values.device), k)
    out = torch.zeros((n, k), dtype=values.dtype, device=values.device)
    out[mask] = values
    return out


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values())
