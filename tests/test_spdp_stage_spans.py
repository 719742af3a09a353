"""CPU check of the staged one-token spdp kernel's span arithmetic (csrc/cuda/matvec.cuh, MvCfg STG).

The kernel copies each active (tile, column) record as the 16-byte-aligned span of its values into a
slot of SLOT = R * 2 + 16 bytes, lanes taking 16-byte chunks (cq + k * LPRC) * 16 for k < CPR, each
chunk zero-filled past the readable bytes; then lane `lane` reads the value of row lane + 32 w at byte
(o[w] - o[0] + popcount(m[w] & below(lane))) * 2 + (o[0] % 8) * 2 of the slot. This emulates those
formulas with numpy on real spdp encodings and checks that every row's value comes out of the slot, that
a span never exceeds its slot, and that the lanes' chunks cover it. The kernel itself is checked against
the reference on the GPU (tests/kernels/test_cuda_kernels.py, marked cuda)."""
import numpy as np
import pytest
import torch

from sparsekit.formats import spdp

ES = 2  # 16-bit values


def _stage_geometry(r: int) -> tuple[int, int, int]:
    sb = 4 if r == 128 else 8  # records per stage (MvCfg::SB)
    lprc = 32 // sb  # lanes copying one record
    slot = r * ES + 16  # MvCfg::SLOT
    cpr = (slot // 16 + lprc - 1) // lprc  # chunks per lane per record
    return lprc, slot, cpr


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("density,shift", ((0.05, 0), (0.5, 8), (1.0, 0), (0.5, 0)))
def test_stage_spans_place_every_value(tile_rows, density, shift):
    g = torch.Generator().manual_seed(tile_rows + int(100 * density) + shift)
    n, k = 301, 37
    w = torch.randn(n, k, generator=g).half()
    w[torch.rand(n, k, generator=g) >= density] = 0
    packed = spdp.encode(w, tile_rows)
    vals = packed["values"].view(torch.int16).numpy().astype(np.uint16)
    store = np.concatenate([np.zeros(shift, np.uint16), vals]).view(np.uint8)  # storage ends at the last value
    base = shift * ES  # the view's first byte; the kernel runs only when it is 16-byte aligned
    assert base % 16 == 0
    vend = len(store) - base  # readable bytes from the view's start (p.nvals * ES)
    bitmap = packed["bitmap"].numpy().view(np.uint32).reshape(-1, k, tile_rows // 32)
    offsets = packed["offsets"].numpy()
    dense = spdp.decode(packed).view(torch.int16).numpy().astype(np.uint16)
    lprc, slot, cpr = _stage_geometry(tile_rows)
    nwords = tile_rows // 32
    for t in range(bitmap.shape[0]):
        for j in range(k):
            m = [int(x) for x in bitmap[t, j]]
            o = [int(offsets[t * k + j])]
            for wd in range(1, nwords):
                o.append(o[-1] + bin(m[wd - 1]).count("1"))
            v0, v1 = o[0], o[-1] + bin(m[-1]).count("1")
            a0 = (v0 * ES) & ~15
            length = v1 * ES - a0
            assert length <= slot - ES  # the span fits its slot
            rem = min(slot, vend - a0)
            buf = np.zeros(slot, np.uint8)  # what the lanes' chunks leave in the slot
            covered = set()
            for cq in range(lprc):
                for kk in range(cpr):
                    c = (cq + kk * lprc) * 16
                    if c < length:
                        nb = max(0, min(16, rem - c))
                        buf[c:c + nb] = store[base + a0 + c: base + a0 + c + nb]
                        covered.update(range(c, c + 16))
            assert set(range(length)) <= covered
            slot_vals = buf.view(np.uint16)
            for wd in range(nwords):
                for lane in range(32):
                    row = t * tile_rows + 32 * wd + lane
                    if (m[wd] >> lane) & 1:
                        r = o[wd] - o[0] + bin(m[wd] & ((1 << lane) - 1)).count("1")
                        byte = r * ES + (o[0] & (16 // ES - 1)) * ES
                        assert byte % 2 == 0 and byte + ES <= slot
                        assert slot_vals[byte // 2] == dense[row, j]
                    elif row < n:
                        assert dense[row, j] == 0
