"""spdp and spinfer encodings: bit-exact round trips and the documented layouts."""
from __future__ import annotations

import pytest
import torch

from sparsekit.formats import spdp, spinfer

from ._util import DTYPES

_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
SHAPES = [(1, 1), (7, 5), (33, 31), (64, 64), (100, 130), (129, 65)]


def _special(shape, dtype, s1, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) < s1] = 0
    w = w.to(dtype)
    w.view(-1)[0] = -0.0  # a non-zero bit pattern: must survive
    if w.numel() > 2:
        w.view(-1)[-1] = float("nan")
    return w


def _bits_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(_INT[a.dtype]), b.view(_INT[b.dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s1", [0.0, 0.6, 1.0])
def test_roundtrips(dtype, s1):
    for i, shape in enumerate(SHAPES):
        w = _special(shape, dtype, s1, i)
        for r in (32, 64, 128):
            assert _bits_equal(spdp.decode(spdp.encode(w, r)), w)
        p = spinfer.encode(w)
        assert _bits_equal(spinfer.decode(p), w)
        assert set(p) == set(spinfer.KEYS)


def _spinfer_by_loops(w: torch.Tensor):
    """An independent encoder: SpInfer's traversal, written as the plain loops of its paper/code."""
    n, k = w.shape
    np_, kp = -(-n // 64) * 64, -(-k // 64) * 64
    a = torch.zeros(np_, kp, dtype=w.dtype)
    a[:n, :k] = w
    values, bitmaps, tile_offsets, group_offsets = [], [], [], [0]
    for gr in range(np_ // 64):
        for gc in range(kp // 64):
            start = len(values)
            for tc in range(4):
                tile_offsets.append(len(values) - start)
                for kc in range(8):
                    for rh in range(2):  # column-major over the 2 x 8 bitmap tiles
                        bm = 0
                        for r in range(8):
                            for c in range(8):
                                v = a[gr * 64 + tc * 16 + rh * 8 + r, gc * 64 + kc * 8 + c]
                                if float(v) != 0.0:
                                    bm |= 1 << (r * 8 + c)
                                    values.append(float(v))
                        bitmaps.append(bm - (1 << 64) if bm >= 1 << 63 else bm)
            while (len(values) - start) % 8:
                values.append(0.0)
            group_offsets.append(len(values))
    return values, bitmaps, tile_offsets, group_offsets


def test_spinfer_layout_matches_spinfer_traversal():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(70, 130, generator=g)
    w[torch.rand(70, 130, generator=g) < 0.7] = 0
    w[0:8, 0:8] = 1.0  # a full bitmap tile: bit 63 set (negative int64)
    values, bitmaps, tile_offsets, group_offsets = _spinfer_by_loops(w)
    p = spinfer.encode(w)
    assert p["values"].tolist() == values
    assert p["bitmaps"].tolist() == bitmaps
    assert p["tile_offsets"].tolist() == tile_offsets
    assert p["group_offsets"].tolist() == group_offsets
    assert p["shape"].tolist() == [70, 130]
    assert p["bitmaps"].dtype == torch.int64 and p["group_offsets"].dtype == torch.int32


def test_spdp_layout():
    w = torch.zeros(40, 3)
    w[1, 0], w[33, 0], w[5, 2] = 1.0, 2.0, 3.0
    p = spdp.encode(w, 32)
    assert p["bitmap"].shape == (2, 3, 1)
    assert p["bitmap"][0, 0, 0] == 2 and p["bitmap"][1, 0, 0] == 2 and p["bitmap"][0, 2, 0] == 32
    assert p["offsets"].tolist() == [0, 1, 1, 2, 3, 3, 3]
    assert p["values"].tolist() == [1.0, 3.0, 2.0]
