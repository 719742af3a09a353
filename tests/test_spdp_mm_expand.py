"""The tensor-core spdp kernel's index arithmetic (csrc/cuda/spdp_mm.cuh), emulated with numpy on real
encodings: the CUDA kernel itself only runs on the GPU machine (tests/kernels/test_cuda_kernels.py).

Per (row tile, column chunk of KC = 4096 / R columns) the kernel copies the values from the 16-byte
boundary below the chunk's first value (zero-filled past the storage), the chunk's bitmap words and
offsets (zero past K); a unit of G rows of one column then finds its first value at
offs[c] - (offs[0] & ~7) + popcounts of the words and bits below, and walks its G bits. These tests
rebuild every chunk's dense tile that way and compare it with ``spdp.decode``; a wrong formula fails.

A balanced unit (the 2:4-over-rows pattern: nibble_counts of its G bits hold 2 for each whole 4-row group
inside the tile's rows and 0 above, and its value index is a multiple of 4) takes the other expansion:
group k's two values are the 32-bit word at idx + 2k, and its 4 rows are the two words
``prmt(word, 0, sel)`` with the selectors ``pair_selectors(its 4 bits)``.

For a weight declared in the fixed balanced layout (FX) the kernel computes the chunk bounds and a unit's
first value from (tile, chunk, column, rows) instead, and takes the balanced expansion for every unit.

In decode mode (TN = 0, spdp_decode) step 3 stores the A^T tile as rows of the dense weight: each thread two
rows x 8 columns, read as 4-byte pairs and split with ``__byte_perm``; ``_decode_store`` emulates it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsekit.formats import spdp
from sparsekit.pruning.masks import nm_out_mask


def _popc(v: int) -> int:
    return bin(v & 0xFFFFFFFF).count("1")


def _nibble_counts(m: int) -> int:  # the kernel's SWAR count, on 32-bit words
    c = (m - ((m >> 1) & 0x55555555)) & 0xFFFFFFFF
    return ((c & 0x33333333) + ((c >> 2) & 0x33333333)) & 0xFFFFFFFF


def _pair_selectors(n: int) -> tuple[int, int]:
    s, seen = [0, 0], 0
    for r in range(4):
        if n >> r & 1:
            code = 0x32 if seen else 0x10
            seen += 1
        else:
            code = 0x44
        s[r >> 1] |= code << (8 * (r & 1))
    return s[0], s[1]


def _prmt_zero(a: int, sel: int) -> int:
    """PTX prmt.b32 d, a, 0, sel (selector nibbles 0-4: bytes of a, then zero bytes; only the low 16 bits of
    sel, the four control nibbles, are read)."""
    src = a.to_bytes(4, "little") + bytes(4)
    return int.from_bytes(bytes(src[(sel >> (4 * i)) & 7] for i in range(4)), "little")


def _expand_tile(packed, tile: int, g: int, storage: np.ndarray, shift: int, align_base: bool = True,
                 units: dict | None = None) -> np.ndarray:
    """The dense [K, R] tile (column-major, as A^T in shared memory) the kernel builds, chunk by chunk;
    `units` counts the units inside K that took the balanced and the generic expansion."""
    n, k, r = spdp.dims(packed)
    w = r // 32
    kc = 4096 // r
    bitmap = packed["bitmap"].numpy().astype(np.int64) & 0xFFFFFFFF
    bitmap = bitmap.reshape(-1, k, w)[tile]
    offsets = packed["offsets"].numpy().astype(np.int64)
    nvals = len(storage)  # values readable from the (shifted) start, as the kernel's p.nvals
    out = np.zeros((k, r), dtype=storage.dtype)
    tbase = tile * k
    for q in range(-(-k // kc)):
        j0 = q * kc
        o0, o1 = offsets[tbase + j0], offsets[tbase + min(k, j0 + kc)]
        a = (o0 + shift) & ~7  # the kernel aligns the address: the shift is part of it
        nv = (o1 + shift - a + 7) >> 3
        assert nv * 8 <= r * kc + 8, "a chunk's run does not fit its slot"
        slot = np.zeros(nv * 8, dtype=storage.dtype)
        for i in range(nv):  # 16-byte pieces, zero-filled past the storage
            e = a + 8 * i
            take = max(0, min(8, shift + nvals - e))
            slot[8 * i : 8 * i + take] = np.concatenate([np.zeros(shift, storage.dtype), storage])[e : e + take]
        cols = np.arange(j0, j0 + kc)
        ok = cols < k
        bm = np.where(ok[:, None], bitmap[np.minimum(cols, k - 1)], 0)
        offs = np.where(ok, offsets[tbase + np.minimum(cols, k - 1)], 0)
        abase = (offs[0] + shift) & ~7 if align_base else offs[0] + shift
        for c in range(kc):
            for r0 in range(0, r, g):
                word, sh = r0 >> 5, r0 & 31
                m = int(bm[c, word])
                idx = offs[c] + shift - abase + sum(_popc(int(bm[c, v])) for v in range(word)) + _popc(m & ((1 << sh) - 1))
                bits = (m >> sh) & ((1 << g) - 1)
                ng = min(g // 4, max(0, (n - tile * r - r0) >> 2))
                balanced = _nibble_counts(bits) == 0x22222222 & ((1 << (4 * ng)) - 1) and idx % 4 == 0
                if units is not None and j0 + c < k:
                    units["balanced" if balanced else "generic"] += 1
                if balanced:
                    for grp in range(g // 4):
                        nib = bits >> (4 * grp) & 0xF
                        word = int(slot[idx + 2 * grp]) & 0xFFFF | (int(slot[idx + 2 * grp + 1]) & 0xFFFF) << 16 if nib else 0
                        sx, sy = _pair_selectors(nib)
                        lo, hi = _prmt_zero(word, sx), _prmt_zero(word, sy)
                        if j0 + c < k:
                            out[j0 + c, r0 + 4 * grp: r0 + 4 * grp + 4] = np.array(
                                [lo & 0xFFFF, lo >> 16, hi & 0xFFFF, hi >> 16], dtype=np.uint16).view(out.dtype)
                    continue
                for i in range(g):
                    if bits >> i & 1:
                        assert 0 <= idx < len(slot), "a load outside the slot"
                        if j0 + c < k:
                            out[j0 + c, r0 + i] = slot[idx]
                        idx += 1
    return out


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("g", (8, 16))
@pytest.mark.parametrize("shift", (0, 8))
@pytest.mark.parametrize("density", (0.05, 0.5, 1.0))
def test_chunks_expand_to_the_decoded_weight(tile_rows, g, shift, density):
    gen = torch.Generator().manual_seed(tile_rows + g + shift + int(density * 100))
    n, k = 150, 4096 // tile_rows + 40  # N past the last full tile, K past one chunk (not a multiple)
    w = torch.randn((n, k), generator=gen).half()
    w[torch.rand((n, k), generator=gen) >= density] = 0
    packed = spdp.encode(w, tile_rows)
    storage = packed["values"].view(torch.int16).numpy()
    dense = spdp.decode(packed).view(torch.int16).numpy()
    nt = -(-n // tile_rows)
    for tile in range(nt):
        got = _expand_tile(packed, tile, g, storage, shift)
        rows = dense[tile * tile_rows : (tile + 1) * tile_rows]  # [<=R, K]
        want = np.zeros((k, tile_rows), dtype=np.int16)
        want[:, : rows.shape[0]] = rows.T
        assert np.array_equal(got, want), f"tile {tile}"


def test_a_base_without_the_alignment_fails():
    """The check above can fail: a kernel that copies from the 16-byte boundary but indexes from the
    chunk's first value itself misplaces the values of every chunk that starts mid-piece."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn((256, 200), generator=gen).half()
    w[torch.rand((256, 200), generator=gen) >= 0.5] = 0
    packed = spdp.encode(w, 64)
    starts = packed["offsets"].numpy()[[t * 200 + j for t in range(4) for j in (0, 64, 128, 192)]]
    assert (starts % 8 != 0).any()
    storage = packed["values"].view(torch.int16).numpy()
    dense = spdp.decode(packed).view(torch.int16).numpy()
    tiles = [(_expand_tile(packed, t, 16, storage, 0), _expand_tile(packed, t, 16, storage, 0, align_base=False))
             for t in range(4)]
    assert all(np.array_equal(good, dense[64 * t : 64 * (t + 1)].T) for t, (good, _) in enumerate(tiles))
    assert not all(np.array_equal(bad, dense[64 * t : 64 * (t + 1)].T) for t, (_, bad) in enumerate(tiles))


@pytest.mark.parametrize("g", (16, 8))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("n,k", ((200, 37), (104, 9), (8, 5), (256, 64), (100, 6)))
def test_balanced_units_expand_to_the_decoded_weight(g, tile_rows, n, k):
    """A weight pruned 2:4 over output rows: every unit of a tile whose rows are a multiple of 8 takes the
    balanced expansion (N = 100 leaves a 4-row tail: those units may fail on alignment and take the
    generic one), and the tiles equal the decoded weight, zeros past the tile's rows included."""
    gen = torch.Generator().manual_seed(g * 7 + tile_rows * 1000 + n + k)
    w = torch.randn((n, k), generator=gen).half()
    w[nm_out_mask(torch.rand((n, k), generator=gen), 2, 4)] = 0.0
    packed = spdp.encode(w, tile_rows)
    storage = packed["values"].view(torch.int16).numpy()
    dense = spdp.decode(packed).view(torch.int16).numpy()
    for tile in range(-(-n // tile_rows)):
        units = {"balanced": 0, "generic": 0}
        got = _expand_tile(packed, tile, g, storage, 0, units=units)
        rows = dense[tile * tile_rows: (tile + 1) * tile_rows]
        want = np.zeros((k, tile_rows), dtype=np.int16)
        want[:, : rows.shape[0]] = rows.T
        assert np.array_equal(got, want), f"tile {tile}"
        assert units["balanced"] > 0
        if rows.shape[0] % 8 == 0:  # only a tile ending in a 4-row tail can miss the pattern
            assert units["generic"] == 0, (tile, units)


def test_pair_selectors_place_the_pair():
    for n in range(16):
        if bin(n).count("1") != 2:
            continue
        rows = [r for r in range(4) if n >> r & 1]
        sx, sy = _pair_selectors(n)
        word = 0xBBBB_AAAA  # first value 0xAAAA, second 0xBBBB
        got = [_prmt_zero(word, sx) & 0xFFFF, _prmt_zero(word, sx) >> 16, _prmt_zero(word, sy) & 0xFFFF,
               _prmt_zero(word, sy) >> 16]
        want = [0, 0, 0, 0]
        want[rows[0]], want[rows[1]] = 0xAAAA, 0xBBBB
        assert got == want, n
        assert all((sel >> (4 * i)) & 0xF <= 4 for sel in (sx, sy) for i in range(4))  # no sign-replicate mode
    assert _pair_selectors(0) == (0x4444, 0x4444)  # a unit past the tile's rows writes zeros


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("n,k", ((256, 37), (128, 200), (384, 64)))
def test_fixed_layout_tensor_core_units_rebuild_the_weight(tile_rows, n, k):
    """The tensor-core kernel's fixed-layout variant (spdp_mm.cuh, FX) reads no offsets either: chunk q of
    tile t (KC = 4096 / R columns) is the run from value (t * K + q * KC) * R / 2 (a multiple of 8, so the
    16-byte copy starts exactly there); the unit of 16 rows r0.. of its column c takes the 8 values at
    c * R / 2 + r0 / 2 of the run as one 16-byte word (aligned: c * R + r0 bytes) and the 16 bits of bitmap word
    (t * K + q * KC + c) * R / 32 + r0 / 32 from bit r0 % 32, and each 4-row group places its pair with two
    byte permutes whose selectors are the two halves of one 32-bit table entry (prmt reads the low 16 bits).
    Emulated here on real encodings (K not a multiple of KC: a partial last chunk), that rebuilds the weight
    bit for bit."""
    gen = torch.Generator().manual_seed(tile_rows * 11 + n + k)
    w = torch.randn((n, k), generator=gen).half()
    w[nm_out_mask(torch.rand((n, k), generator=gen), 2, 4)] = 0.0
    packed = spdp.encode(w, tile_rows)
    assert spdp.fixed_layout(packed)
    vals = packed["values"].view(torch.int16).numpy().astype(np.uint16)
    words = packed["bitmap"].numpy().reshape(-1).view(np.uint32)
    dense = w.view(torch.int16).numpy().astype(np.uint16)
    rebuilt = np.full_like(dense, 0xFFFF)
    kc, nw, half = 4096 // tile_rows, tile_rows // 32, tile_rows // 2
    for t in range(n // tile_rows):
        for q in range(-(-k // kc)):
            base = (t * k + q * kc) * half
            assert base % 8 == 0
            run = vals[base:]
            for c in range(min(kc, k - q * kc)):
                for r0 in range(0, tile_rows, 16):
                    idx = c * half + r0 // 2
                    assert (2 * (base + idx)) % 16 == 0  # one aligned 16-byte shared-memory load
                    bits = (int(words[(t * k + q * kc + c) * nw + r0 // 32]) >> (r0 % 32)) & 0xFFFF
                    for grp in range(4):
                        pair = int(run[idx + 2 * grp]) | (int(run[idx + 2 * grp + 1]) << 16)
                        sx, sy = _pair_selectors((bits >> (4 * grp)) & 0xF)
                        sel = sx | (sy << 16)  # the kernel's sel_tab entry
                        lo, hi = _prmt_zero(pair, sel), _prmt_zero(pair, sel >> 16)
                        row = t * tile_rows + r0 + 4 * grp
                        rebuilt[row: row + 4, q * kc + c] = [lo & 0xFFFF, lo >> 16, hi & 0xFFFF, hi >> 16]
    assert np.array_equal(rebuilt, dense)


def _byte_perm(a: int, b: int, sel: int) -> int:
    """CUDA's __byte_perm(a, b, sel): bytes of b:a (a is bytes 0-3) picked by the selector's low nibbles."""
    both = (b & 0xFFFFFFFF) << 32 | (a & 0xFFFFFFFF)
    return sum(((both >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def _decode_store(at: np.ndarray, tile: int, r: int, n: int, out: np.ndarray, writes: np.ndarray) -> None:
    """The decode mode's step 3 (spdp_mm.cuh, TN = 0) for every chunk of one tile: thread t of 256 (warp
    t / 32, lane t % 32) reads rows 2 rp, 2 rp + 1 of columns 8 cq .. 8 cq + 7 from A^T as 4-byte pairs and
    stores two 16-byte pieces, rows past N and columns past K skipped. Counts every element written."""
    k = at.shape[0]
    kc = 4096 // r
    pairs = np.ascontiguousarray(at).view(np.uint16)  # [K, R] halves; a 4-byte pair is rows 2 rp, 2 rp + 1
    for q in range(-(-k // kc)):
        for t in range(256):
            warp, lane = t // 32, t % 32
            rg = r // 32
            rp, cq = (lane >> 1) + 16 * (warp % rg), (lane & 1) + 2 * (warp // rg)
            n0, j = tile * r + 2 * rp, q * kc + 8 * cq
            col = np.minimum(np.arange(8 * cq, 8 * cq + 8) + q * kc, k - 1)  # A^T past K: never stored
            w = [int(pairs[c, 2 * rp]) | int(pairs[c, 2 * rp + 1]) << 16 for c in col]
            if j >= k:
                continue
            for row, sel in ((n0, 0x5410), (n0 + 1, 0x7632)):
                if row < n:
                    piece = [_byte_perm(w[2 * i], w[2 * i + 1], sel) for i in range(4)]
                    halves = np.array([h for x in piece for h in (x & 0xFFFF, x >> 16)], dtype=np.uint16)
                    out[row, j: j + 8] = halves.view(out.dtype)
                    writes[row, j: j + 8] += 1


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_decode_mode_writes_every_element_once(tile_rows):
    """spdp_decode through the tensor-core kernel: the expansion's A^T tiles, stored by step 3's thread
    mapping, give the decoded weight, and each element inside [N, K] is written exactly once (N odd and
    past the last full tile, K % 8 == 0 past one chunk; 2:4-out and unstructured weights)."""
    gen = torch.Generator().manual_seed(tile_rows)
    n, k = 2 * tile_rows + 13, 4096 // tile_rows + 48
    for w in (torch.randn((n, k), generator=gen).half(), torch.randn((n - 13, k), generator=gen).half()):
        w[nm_out_mask(torch.rand(w.shape, generator=gen), 2, 4) if w.shape[0] % 4 == 0
          else torch.rand(w.shape, generator=gen) < 0.5] = 0.0
        packed = spdp.encode(w, tile_rows)
        storage = packed["values"].view(torch.int16).numpy()
        out = np.zeros(w.shape, dtype=np.int16)
        writes = np.zeros(w.shape, dtype=np.int64)
        for tile in range(-(-w.shape[0] // tile_rows)):
            _decode_store(_expand_tile(packed, tile, 16, storage, 0), tile, tile_rows, w.shape[0], out, writes)
        assert (writes == 1).all()
        assert np.array_equal(out, w.view(torch.int16).numpy())
