"""The ``spinfer`` weight format: SpInfer's tensor-core-aware bitmap encoding (TCA-BME).

A weight ``W`` of shape ``[N, K]`` (out, in) is zero-padded to ``Np x Kp`` (multiples of 64) and cut
into three levels of tiles:

- **group tiles** of 64 x 64, ``G = (Np/64) * (Kp/64)`` of them, in row-major order: group
  ``g = gr * (Kp/64) + gc`` covers rows ``64*gr ..`` and columns ``64*gc ..`` (one output-row
  stripe's groups are consecutive, so a kernel owning 64 output rows walks them in order);
- each group = 4 **tensor-core tiles** of 16 x 64, top to bottom (``tc = 0..3``, rows ``16*tc ..``);
- each tensor-core tile = 16 **bitmap tiles** of 8 x 8 over its 2 x 8 grid, in column-major order
  (the A-fragment order of ``mma.m16n8k16``): bitmap tile ``b = 2*kc + rh`` covers rows
  ``8*rh ..`` and columns ``8*kc ..`` of the tensor-core tile;
- each bitmap tile = one 64-bit bitmap, bit ``8*r + c`` set when element ``(r, c)`` is non-zero.

Stored tensors (the dict ``encode`` returns, saved in safetensors as ``<linear>.<key>``):

- ``bitmaps``: int64 ``[G * 64]``, index ``g*64 + tc*16 + b`` (bit 63 makes the int64 negative);
- ``values``: 1-D, W's dtype: the non-zeros of every group in bitmap-bit order (tensor-core tile,
  then bitmap tile, then bit); each group's run is zero-padded to a multiple of 8 values, so every
  group starts 16-byte aligned in fp16/bf16 (as in SpInfer);
- ``group_offsets``: int32 ``[G + 1]``: group ``g``'s values start at ``group_offsets[g]``
  (the padding included, so ``group_offsets[G] == len(values)``);
- ``tile_offsets``: int32 ``[G * 4]``: tensor-core tile ``tc`` of group ``g`` starts at
  ``group_offsets[g] + tile_offsets[g*4 + tc]`` (relative to its group; ``tile_offsets[g*4] == 0``);
- the bitmap tile's start inside its tensor-core tile is the popcount of the earlier bitmaps;
- ``shape``: int64 ``[2]`` = ``[N, K]`` (unpadded), on the CPU.

``encode`` works on the weight's device (the other tensors are returned there).

"Non-zero" means a non-zero bit pattern, so ``-0.0`` and NaN are kept and ``decode(encode(W))``
reproduces ``W`` bit for bit. ``spinfer_matmul(x, packed) = x @ W.T``.
"""
from __future__ import annotations

import torch

from sparsekit.formats import nonzero_bits, packed_shape

KEYS = ("values", "bitmaps", "tile_offsets", "group_offsets", "shape")
GROUP = 64
ALIGN = 8  # values per group are padded to a multiple of this
_CHUNK = 32  # group rows encoded at a time (bounds the temporary memory)


def _bit_weights(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.ones(64, dtype=torch.int64, device=device) << torch.arange(64, dtype=torch.int64, device=device)


def padded_shape(n: int, k: int) -> tuple[int, int]:
    return -(-n // GROUP) * GROUP, -(-k // GROUP) * GROUP


def _to_tiles(w: torch.Tensor, gr: int, gk: int) -> torch.Tensor:
    """[gr*64, gk*64] -> [gr*gk, 4096], each group's elements in bitmap-bit order."""
    # rows = 64*gr + 16*tc + 8*rh + r ; cols = 64*gc + 8*kc + c
    t = w.reshape(gr, 4, 2, 8, gk, 8, 8)
    # order within a group: tc, kc, rh (column-major bitmap tiles), r, c
    return t.permute(0, 4, 1, 5, 2, 3, 6).reshape(gr * gk, GROUP * GROUP)


def _from_tiles(tiles: torch.Tensor, gr: int, gk: int) -> torch.Tensor:
    t = tiles.reshape(gr, gk, 4, 8, 2, 8, 8)  # gr, gc, tc, kc, rh, r, c
    return t.permute(0, 2, 4, 5, 1, 3, 6).reshape(gr * GROUP, gk * GROUP)


def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"spinfer encodes 2-D weights, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    np_, kp = padded_shape(n, k)
    grows, gk = np_ // GROUP, kp // GROUP
    w = weight.detach()  # encoded where it lives (a GPU encodes big weights in milliseconds)
    dev = w.device
    padded = torch.zeros((np_, kp), dtype=w.dtype, device=dev)
    padded[:n, :k] = w
    bw = _bit_weights(dev)
    bitmaps, counts, tile_counts, chunks = [], [], [], []
    for r0 in range(0, grows, _CHUNK):
        r1 = min(grows, r0 + _CHUNK)
        tiles = _to_tiles(padded[r0 * GROUP : r1 * GROUP], r1 - r0, gk)  # [g, 4096]
        nz = nonzero_bits(tiles)
        bits = nz.reshape(-1, 64, 64).to(torch.int64)
        bitmaps.append((bits * bw).sum(-1).reshape(-1))  # distinct bits: the sum is an OR
        tile_counts.append(nz.reshape(-1, 4, 1024).sum(-1))
        counts.append(nz.sum(-1))
        chunks.append((tiles, nz))
    count = torch.cat(counts).to(torch.int64)  # per group
    padded_count = (count + ALIGN - 1) // ALIGN * ALIGN
    group_offsets = torch.zeros(len(count) + 1, dtype=torch.int64, device=dev)
    group_offsets[1:] = torch.cumsum(padded_count, 0)
    if int(group_offsets[-1]) >= 2**31:
        raise ValueError("weight has too many non-zeros for int32 offsets")
    tc = torch.cat(tile_counts).to(torch.int64)  # [G, 4]
    tile_offsets = torch.cumsum(tc, 1) - tc
    values = torch.zeros(int(group_offsets[-1]), dtype=w.dtype, device=dev)
    g0 = 0
    for tiles, nz in chunks:
        g1 = g0 + tiles.shape[0]
        dest = group_offsets[g0:g1, None] + torch.cumsum(nz, 1, dtype=torch.int64) - 1
        values[dest[nz]] = tiles[nz]
        g0 = g1
    return {
        "values": values,
        "bitmaps": torch.cat(bitmaps).contiguous(),
        "tile_offsets": tile_offsets.reshape(-1).to(torch.int32),
        "group_offsets": group_offsets.to(torch.int32),
        "shape": torch.tensor([n, k], dtype=torch.int64),  # always on the CPU
    }


def dims(packed: dict) -> tuple[int, int]:
    """(N, K) of a packed weight; ``shape`` may be a tensor (kept on the CPU: no sync) or a sequence."""
    n, k = packed_shape(packed)
    return n, k


def decode(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    n, k = dims(packed)
    np_, kp = padded_shape(n, k)
    grows, gk = np_ // GROUP, kp // GROUP
    g = grows * gk
    values, bitmaps = packed["values"], packed["bitmaps"].reshape(-1)
    device = values.device
    if bitmaps.numel() != g * 64 or packed["group_offsets"].numel() != g + 1 or packed["tile_offsets"].numel() != g * 4:
        raise ValueError(f"spinfer tensors do not match shape {[n, k]}")
    nz = ((bitmaps.to(device).unsqueeze(-1) >> torch.arange(64, device=device)) & 1).bool().reshape(g, 4096)
    group_offsets = packed["group_offsets"].to(device=device, dtype=torch.int64)
    dest = group_offsets[:-1, None] + torch.cumsum(nz, 1, dtype=torch.int64) - 1
    tiles = torch.zeros((g, 4096), dtype=values.dtype, device=device)
    tiles[nz] = values[dest[nz]]
    return _from_tiles(tiles, grows, gk)[:n, :k].contiguous()


def nbytes(packed: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values() if isinstance(t, torch.Tensor))
