"""The ``spdp`` weight format: column-tiled bitmaps, for weight x activation sparsity in decode.

A weight ``W`` of shape ``[N, K]`` (out, in) is cut into row tiles of ``R`` output rows
(``R`` in {32, 64, 128}; ``NT = ceil(N / R)`` tiles, the last one padded with zeros). For every
(row tile ``r``, input column ``j``) we store

- ``bitmap[r, j, w]`` (int32, shape ``[NT, K, R // 32]``): bit ``b`` of word ``w`` is set when
  ``W[r*R + 32*w + b, j] != 0``;
- the non-zero values of that tile column, in increasing row order, packed into ``values``
  (1-D, W's dtype), starting at ``offsets[r*K + j]`` (int32 prefix sums, shape ``[NT*K + 1]``,
  tile-major so one row tile's data is contiguous).

A decode kernel gives each row tile to one program (it owns its ``R`` accumulators: no atomics)
and walks only the active input columns of that tile, so bytes read scale as
``(1 - s1) * (1 - s2)`` plus ``R / 8`` bitmap bytes per (tile, active column).

``encode`` returns a dict of tensors (saved in safetensors as ``<linear>.<key>``), ``decode``
inverts it bit for bit ("non-zero" means a non-zero bit pattern, so ``-0.0`` and NaN are kept).

Weights pruned 2:4 over output rows (``--structure 2:4-out``: 2 of every 4 consecutive rows of each
column zeroed) are stored with exactly 2 values in every such group, which lets the CUDA one-token
kernel find a lane's values without popcounts (its balanced path). A group that lost a third weight
to an exact zero (an fp16 underflow, a zero already in the checkpoint) would break that, so when no
whole 4-row group holds more than 2 non-zeros and at least 99.9 % hold exactly 2, ``encode`` also
stores the first zeros of the short groups as values (``+0.0``): the same weight, at most 0.1 % more
values. Other weights are stored exactly as described above.

``fixed_layout`` tells whether a packed weight is in the *fixed balanced layout*: whole tiles
(``N % R == 0``) and exactly 2 values in every 4-row group of every tile column, so tile column
``(r, j)`` holds ``R / 2`` values starting at ``(r*K + j) * R / 2``. A kernel can then address any
column's values and bitmap from ``(r, j)`` alone, without reading ``offsets`` first (the CUDA
one-token kernel does; ``SparseLinear`` checks this once and declares it to the ops).
"""
from __future__ import annotations

import torch

from sparsekit.formats import nonzero_bits, packed_shape

KEYS = ("values", "bitmap", "offsets", "shape")
# bitmap bytes of the fixed balanced layout: both nibbles hold 2 bits (36 of the 256 values)
_BALANCED_BYTES = tuple(b for b in range(256) if bin(b & 0xF).count("1") == 2 and bin(b >> 4).count("1") == 2)


def dims(packed: dict) -> tuple[int, int, int]:
    """(n, k, tile_rows); ``shape`` may be a tensor (kept on the CPU: no sync) or a sequence."""
    n, k, r = packed_shape(packed)
    return n, k, r


def _pad_two_per_four(nz: torch.Tensor, n: int, tile_rows: int) -> torch.Tensor:
    """``nz`` [NT, K, R] with the 2:4-over-rows padding of the module docstring applied (or as is)."""
    nt, k, _ = nz.shape
    groups = nz.reshape(nt, k, tile_rows // 4, 4)
    counts = groups.sum(-1)  # [NT, K, R/4]
    first_row = (torch.arange(nt, device=nz.device).view(nt, 1, 1) * tile_rows
                 + 4 * torch.arange(tile_rows // 4, device=nz.device).view(1, 1, -1))
    whole = (first_row + 3 < n).expand_as(counts)  # groups entirely inside the weight
    inside = counts[whole]
    if inside.numel() == 0 or bool((inside > 2).any()) or float((inside == 2).float().mean()) < 0.999:
        return nz
    zeros_before = torch.cumsum(~groups, -1)  # position of each zero among its group's zeros (1-based)
    pad = ~groups & (zeros_before <= (2 - counts).unsqueeze(-1)) & whole.unsqueeze(-1)
    return (groups | pad).reshape(nt, k, tile_rows)


def encode(weight: torch.Tensor, tile_rows: int = 64) -> dict[str, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"spdp encodes 2-D weights, got shape {tuple(weight.shape)}")
    if tile_rows not in (32, 64, 128):
        raise ValueError(f"tile_rows must be 32, 64 or 128, got {tile_rows}")
    n, k = weight.shape
    nt = -(-n // tile_rows)
    w = weight.detach()  # encoded where it lives (a GPU encodes big weights in milliseconds)
    padded = torch.zeros((nt * tile_rows, k), dtype=w.dtype, device=w.device)
    padded[:n] = w
    # [NT, R, K] -> [NT, K, R]: tile-major, then column, then row within the tile
    tiles = padded.reshape(nt, tile_rows, k).permute(0, 2, 1).contiguous()
    nz = _pad_two_per_four(nonzero_bits(tiles), n, tile_rows)
    words = nz.reshape(nt, k, tile_rows // 32, 32).to(torch.int64)
    weights_of_bits = torch.ones(32, dtype=torch.int64, device=w.device) << torch.arange(32, dtype=torch.int64, device=w.device)
    bitmap64 = (words * weights_of_bits).sum(-1)  # [NT, K, R/32] in [0, 2^32)
    bitmap = torch.where(bitmap64 >= 2**31, bitmap64 - 2**32, bitmap64).to(torch.int32)
    counts = nz.sum(-1).reshape(-1).to(torch.int64)  # per (r, j), tile-major
    offsets = torch.zeros(nt * k + 1, dtype=torch.int64, device=w.device)
    offsets[1:] = torch.cumsum(counts, 0)
    if int(offsets[-1]) >= 2**31:
        raise ValueError("weight has too many non-zeros for int32 offsets")
    values = tiles[nz].contiguous()  # row-major order of [NT, K, R] = the documented packing order
    return {
        "values": values,
        "bitmap": bitmap,
        "offsets": offsets.to(torch.int32),
        "shape": torch.tensor([n, k, tile_rows], dtype=torch.int64),  # always on the CPU
    }


def fixed_layout(packed: dict) -> bool:
    """Whether ``packed`` is in the fixed balanced layout (module docstring). Reads the bitmap and
    offsets once (a device sync on a GPU): call it when a weight is loaded, not per step."""
    n, k, r = dims(packed)
    if n == 0 or k == 0 or n % r != 0:
        return False
    nt = n // r
    offsets = packed["offsets"].reshape(-1)
    if offsets.numel() != nt * k + 1 or packed["values"].numel() < nt * k * (r // 2):
        return False
    expected = torch.arange(nt * k + 1, device=offsets.device, dtype=torch.int64) * (r // 2)
    if not torch.equal(offsets.to(torch.int64), expected):
        return False
    # every bitmap byte must be one of _BALANCED_BYTES, checked in chunks
    good = torch.zeros(256, dtype=torch.bool, device=offsets.device)
    good[torch.tensor(_BALANCED_BYTES, device=offsets.device)] = True
    bytes_ = packed["bitmap"].reshape(-1).contiguous().view(torch.uint8)
    chunk = 1 << 24
    return all(bool(good[bytes_[i:i + chunk].long()].all()) for i in range(0, bytes_.numel(), chunk))


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    n, k, tile_rows = dims(packed)
    nt = -(-n // tile_rows)
    device = packed["values"].device
    bitmap = packed["bitmap"].to(torch.int64) & 0xFFFFFFFF  # [NT, K, R/32]
    bits = (bitmap.unsqueeze(-1) >> torch.arange(32, device=device)) & 1
    nz = bits.reshape(nt, k, tile_rows).bool()
    tiles = torch.zeros((nt, k, tile_rows), dtype=packed["values"].dtype, device=device)
    tiles[nz] = packed["values"]
    return tiles.permute(0, 2, 1).reshape(nt * tile_rows, k)[:n].contiguous()


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values())
