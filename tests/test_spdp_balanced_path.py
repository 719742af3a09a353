"""CPU check of the one-token spdp kernel's balanced path (csrc/cuda/matvec.cuh, MvCfg BAL).

A block takes the path when every staged column passes `nibble_counts(word) == bal_expected(w, rows)`
for each bitmap word (2 bits in each whole nibble inside the tile, none above), its offset is a
multiple of 4 and its values end inside the storage. Then lane l8 of a column owns rows 8 l8 .. 8 l8 + 7
(byte l8 % 4 of word l8 / 4), loads the 4 values at value index offset + 4 l8 as one 8-byte word, and
`bal_nibble` gives each row of a nibble n the first value, the second or nothing:
row 0: first if bit 0; row 1: (bit 0 ? second : first) if bit 1; row 2: (bit 3 ? first : second) if
bit 2; row 3: second if bit 3. This emulates those formulas with numpy on real spdp encodings of
weights pruned 2:4 over output rows and checks that they rebuild the weight exactly, and that the check
rejects the columns the path would read wrongly. The kernel itself is checked against the reference on
the GPU (tests/kernels/test_cuda_kernels.py, marked cuda)."""
import numpy as np
import pytest
import torch

from sparsekit.formats import spdp


def _nibble_counts(m: int) -> int:  # the kernel's SWAR count, on 32-bit words
    c = (m - ((m >> 1) & 0x55555555)) & 0xFFFFFFFF
    return ((c & 0x33333333) + ((c >> 2) & 0x33333333)) & 0xFFFFFFFF


def _bal_expected(w: int, rows: int) -> int:
    nv = min(8, max(0, (rows - 32 * w) >> 2))
    return 0x22222222 if nv >= 8 else 0x22222222 & ((1 << (4 * nv)) - 1)


def _bal_nibble(n: int, v0: int, v1: int) -> list[int]:
    """The raw 16-bit value each of the nibble's 4 rows takes (0 where its bit is clear)."""
    return [v0 if n & 1 else 0,
            (v1 if n & 1 else v0) if n & 2 else 0,
            (v0 if n & 8 else v1) if n & 4 else 0,
            v1 if n & 8 else 0]


def _prune_24_out(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, k = w.shape
    groups = n // 4
    keep = torch.rand(groups, 4, k, generator=g).argsort(dim=1)[:, :2]
    mask = torch.zeros(groups, 4, k, dtype=torch.bool).scatter_(1, keep, True).reshape(4 * groups, k)
    out = w.clone()
    out[: 4 * groups].masked_fill_(~mask, 0.0)  # +0.0 (spdp stores -0.0 as a value, as a product would leave it)
    return out


def _columns(packed, tile_rows):
    """Per (tile, column): its bitmap words, its first value index, its rows in the tile."""
    n, k = (int(v) for v in packed["shape"][:2])
    bitmap = packed["bitmap"].numpy().view(np.uint32).reshape(-1, k, tile_rows // 32)
    offsets = packed["offsets"].numpy()
    for t in range(bitmap.shape[0]):
        rows = min(tile_rows, n - t * tile_rows)
        for j in range(k):
            yield t, j, [int(x) for x in bitmap[t, j]], int(offsets[t * k + j]), rows


def _passes(words, off, rows, nvals) -> bool:
    count = sum(bin(m).count("1") for m in words)
    return (all(_nibble_counts(m) == _bal_expected(w, rows) for w, m in enumerate(words))
            and off % 4 == 0 and off + count <= nvals)


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("n,k", ((200, 37), (104, 9), (8, 5), (256, 64)))
def test_balanced_path_rebuilds_the_weight(tile_rows, n, k):
    g = torch.Generator().manual_seed(tile_rows * 1000 + n + k)
    w = _prune_24_out(torch.randn(n, k, generator=g).half(), g)
    packed = spdp.encode(w, tile_rows)
    vals = packed["values"].view(torch.int16).numpy().astype(np.uint16)
    dense = w.view(torch.int16).numpy().astype(np.uint16)
    rebuilt = np.zeros_like(dense)
    for t, j, words, off, rows in _columns(packed, tile_rows):
        assert _passes(words, off, rows, len(vals)), (t, j)  # N % 8 == 0: every column has the pattern
        for l8 in range(tile_rows // 8):
            byte = (words[l8 >> 2] >> ((l8 & 3) * 8)) & 0xFF
            if byte == 0:  # the kernel loads nothing (rows past the tile)
                assert 8 * l8 >= rows
                continue
            v = vals[off + 4 * l8: off + 4 * l8 + 4]  # the lane's aligned 8-byte load
            assert (off + 4 * l8) % 4 == 0 and len(v) == 4
            got = _bal_nibble(byte & 0xF, int(v[0]), int(v[1])) + _bal_nibble(byte >> 4, int(v[2]), int(v[3]))
            for a, bits in enumerate(got):
                r = t * tile_rows + 8 * l8 + a
                if r < n:
                    rebuilt[r, j] = bits
                else:
                    assert bits == 0
    assert np.array_equal(rebuilt, dense)


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_balanced_check_rejects_other_columns(tile_rows):
    """Random 50 % weights, a nibble with 1 or 3 bits, rows past a partial nibble (N % 4 != 0), and the
    columns after an odd-count one (offsets no longer multiples of 4) fail the check; the kernel's own
    loop handles them."""
    g = torch.Generator().manual_seed(tile_rows)
    n, k = 98, 40
    w = _prune_24_out(torch.randn(n, k, generator=g).half(), g)
    w[:, 0] = 0
    w[0, 0], w[1, 0] = 1.0, 1.0  # column 0: nibble 0 has 2 bits; add a third
    w[2, 0] = 1.0
    w[96:, 1] = 1.0  # column 1: the partial last nibble (rows 96, 97) holds bits
    packed = spdp.encode(w, tile_rows)
    nvals = packed["values"].numel()
    verdict = {(t, j): _passes(words, off, rows, nvals) for t, j, words, off, rows in _columns(packed, tile_rows)}
    last = (n - 1) // tile_rows
    assert verdict[(0, 0)] is False
    assert verdict[(last, 1)] is False
    # rows 96, 97 of every other column are pruned 50 % at random: some columns keep an odd count there
    assert not all(verdict[(last, j)] for j in range(k))
    rnd = torch.randn(128, 16, generator=g).half()
    rnd[torch.rand(128, 16, generator=g) < 0.5] = 0
    p2 = spdp.encode(rnd, tile_rows)
    assert not all(_passes(wd, o, r, p2["values"].numel()) for _, _, wd, o, r in _columns(p2, tile_rows))
    # and the expectation itself: a full word wants 2 per nibble; a 36-row tile's second word wants 1 nibble
    assert _bal_expected(0, 64) == 0x22222222 and _bal_expected(1, 36) == 0x2 and _bal_expected(1, 32) == 0
    assert _nibble_counts(0b0110_0011) == 0x22 and _nibble_counts(0b0111_0011) == 0x32


def test_bal_nibble_covers_the_six_patterns():
    for n in range(16):
        if bin(n).count("1") != 2:
            continue
        rows = [r for r in range(4) if n >> r & 1]
        got = _bal_nibble(n, 11, 22)
        want = [0, 0, 0, 0]
        want[rows[0]], want[rows[1]] = 11, 22
        assert got == want, n


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_encode_pads_short_groups_of_a_2_4_out_weight(tile_rows):
    """A 2:4-over-rows weight that lost a few more weights to exact zeros is stored with exactly 2 values
    per 4-row group (the zeros kept as +0.0 values), so every column takes the balanced path; decode
    still gives the weight bit for bit. Weights that are not 2:4 over rows are stored as they are."""
    g = torch.Generator().manual_seed(tile_rows + 7)
    n, k = 512, 256
    w = _prune_24_out(torch.randn(n, k, generator=g).half(), g)
    kept = (w != 0).nonzero()
    lost = kept[torch.randperm(len(kept), generator=g)[:20]]  # 20 of 32768 groups lose one more weight
    w[lost[:, 0], lost[:, 1]] = 0.0
    packed = spdp.encode(w, tile_rows)
    assert packed["values"].numel() == n * k // 2 == int((w != 0).sum()) + 20
    assert torch.equal(spdp.decode(packed).view(torch.int16), w.view(torch.int16))
    nvals = packed["values"].numel()
    assert all(_passes(words, off, rows, nvals) for _, _, words, off, rows in _columns(packed, tile_rows))
    # not 2:4 over rows: unstructured 50 %, 90 % (every group has <= 2, few exactly 2), or too many short groups
    for density in (0.5, 0.1):
        u = torch.randn(n, k, generator=g).half()
        u[torch.rand(n, k, generator=g) >= density] = 0
        assert spdp.encode(u, tile_rows)["values"].numel() == int((u != 0).sum())
    short = w.clone()
    short[0] = 0.0  # 256 short groups (0.8 %)
    assert spdp.encode(short, tile_rows)["values"].numel() == int((short != 0).sum())



# ---- the fixed balanced layout (formats/spdp.fixed_layout; matvec.cuh V = 5) -----------------------

@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("n,k", ((256, 37), (128, 9), (384, 64)))
def test_fixed_layout_addresses_every_value_from_tile_and_column(tile_rows, n, k):
    """The V = 5 kernel reads no offsets: lane li (of lpr = R / 8) of tile t, column k, takes 8-byte piece
    i = (t * K + k) * lpr + li of the values and byte i of the bitmap, and places the 4 values with
    bal_nibble. Emulated here on real encodings, that rebuilds the weight bit for bit."""
    g = torch.Generator().manual_seed(tile_rows * 7 + n + k)
    w = _prune_24_out(torch.randn(n, k, generator=g).half(), g)
    packed = spdp.encode(w, tile_rows)
    assert spdp.fixed_layout(packed)
    vals = packed["values"].view(torch.int16).numpy().astype(np.uint16)
    bytes_ = packed["bitmap"].numpy().reshape(-1).view(np.uint8)  # little-endian words: byte i = rows 8i .. 8i + 7
    dense = w.view(torch.int16).numpy().astype(np.uint16)
    rebuilt = np.zeros_like(dense)
    lpr = tile_rows // 8
    for t in range(n // tile_rows):
        for j in range(k):
            for li in range(lpr):
                i = (t * k + j) * lpr + li
                v = vals[4 * i: 4 * i + 4]
                b = int(bytes_[i])
                got = _bal_nibble(b & 0xF, int(v[0]), int(v[1])) + _bal_nibble(b >> 4, int(v[2]), int(v[3]))
                rebuilt[t * tile_rows + 8 * li: t * tile_rows + 8 * li + 8, j] = got
    assert np.array_equal(rebuilt, dense)


@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_fixed_layout_is_only_claimed_where_it_holds(tile_rows):
    """Whole tiles of 2:4-over-rows weights are in the layout; a partial last tile, unstructured weights,
    one group with a third non-zero, or offsets that do not follow the layout are not."""
    g = torch.Generator().manual_seed(tile_rows + 11)
    n, k = 2 * tile_rows, 24
    w = _prune_24_out(torch.randn(n, k, generator=g).half(), g)
    assert spdp.fixed_layout(spdp.encode(w, tile_rows))
    assert not spdp.fixed_layout(spdp.encode(w[: n - 4], tile_rows))  # partial last tile
    u = torch.randn(n, k, generator=g).half()
    u[torch.rand(n, k, generator=g) < 0.5] = 0
    assert not spdp.fixed_layout(spdp.encode(u, tile_rows))
    three = w.clone()
    col = three[4:8, 5]
    col[col == 0] = torch.tensor([1.0, 0.0], dtype=torch.half)[: int((col == 0).sum())]  # 3 non-zeros in rows 4-7
    assert not spdp.fixed_layout(spdp.encode(three, tile_rows))
    packed = spdp.encode(w, tile_rows)
    packed["offsets"] = packed["offsets"].clone()
    packed["offsets"][1] += 4  # same values, the first column claims 4 more
    assert not spdp.fixed_layout(packed)


def test_sparse_linear_declares_the_fixed_layout_and_every_backend_agrees():
    """SparseLinear checks the layout once and puts `fixed` in packed(); the ops then pass a negative
    tile_rows to the compiled backends. The CPU kernel reads offsets either way: the same bits."""
    from sparsekit import _ext, ops
    from sparsekit.runtime.linear import SparseLinear

    g = torch.Generator().manual_seed(5)
    n, k = 128, 96
    lin = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(_prune_24_out(torch.randn(n, k, generator=g), g))
    layer = SparseLinear.from_linear(lin, "spdp", threshold=0.3, tile_rows=64)
    assert layer.packed().get("fixed") is True
    x = torch.randn(3, k, generator=g)
    want = ops.spdp_matvec(x, layer.packed(), 0.3, backend="reference")
    plain = {key: v for key, v in layer.packed().items() if key != "fixed"}
    assert torch.allclose(ops.spdp_matvec(x, plain, 0.3, backend="reference"), want)
    if _ext.load() is not None:
        got = ops.spdp_matvec(x, layer.packed(), 0.3, backend="cpu")
        assert torch.equal(got, ops.spdp_matvec(x, plain, 0.3, backend="cpu"))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        xs, idx, nnz = ops.select(x, 0.3, backend="cpu")
        assert torch.equal(ops.spdp_matvec_sel(xs, idx, nnz, layer.packed(), backend="cpu"),
                           ops.spdp_matvec_sel(xs, idx, nnz, plain, backend="cpu"))
    lin_u = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin_u.weight[torch.rand(n, k, generator=g) < 0.5] = 0
    assert "fixed" not in SparseLinear.from_linear(lin_u, "spdp", threshold=0.3, tile_rows=64).packed()
