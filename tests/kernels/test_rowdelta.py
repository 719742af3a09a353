"""The rowdelta layout (formats/rowdelta.py) and its CPU kernel against the reference."""
from __future__ import annotations

import pytest
import torch

from sparsekit import ops
from sparsekit.formats import rowdelta
from sparsekit.kernels import reference as ref

from ._util import DTYPES, TOL, rel_err, weight

INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,s1", [(5, 7, 0.5), (33, 200, 0.9), (64, 517, 0.6), (3, 100, 0.99), (4, 1, 0.0),
                                    (9, 64, 1.0), (0, 5, 0.5), (6, 0, 0.5)])
def test_roundtrip_is_bit_exact(dtype, n, k, s1):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = weight(n, k, dtype, s1, gen)
    if n and k:
        w[0, 0] = -0.0  # a non-zero bit pattern: kept
    p = rowdelta.encode(w)
    assert set(p) == set(rowdelta.KEYS)
    assert p["values"].numel() % rowdelta.VEC == 0 and p["deltas"].numel() * rowdelta.VEC == p["values"].numel()
    assert p["row_offsets"].dtype == torch.int32 and p["row_offsets"].numel() == n + 1
    assert torch.equal(rowdelta.decode(p).view(INT[dtype]), w.view(INT[dtype]))


def test_gaps_get_fillers_and_rows_are_padded():
    w = torch.zeros(3, 100)
    w[0, 0] = 1.0  # step 0
    w[0, 15] = 2.0  # step 15: no filler
    w[0, 31] = 3.0  # step 16: one filler (15) then 1
    w[1, 99] = 4.0  # from column 0: six fillers (90) then 9
    p = rowdelta.encode(w)
    st = rowdelta.steps(p).tolist()
    ro = p["row_offsets"].tolist()
    assert ro == [0, 1, 2, 2]  # row 0: 4 entries -> 1 vector; row 1: 7 entries -> 1 vector; row 2: empty
    assert st[:8] == [0, 15, 15, 1, 0, 0, 0, 0]
    assert p["values"][:4].tolist() == [1.0, 2.0, 0.0, 3.0]
    assert st[8:16] == [15] * 6 + [9, 0]
    assert p["values"][8:16].tolist() == [0.0] * 6 + [4.0, 0.0]
    assert torch.equal(rowdelta.decode(p), w)


def test_steps_pack_for_the_bytewise_prefix():
    """The kernels' arithmetic: byte j of (word & 0x0F0F0F0F) * 0x01010101 is the sum of steps 0..j."""
    w = weight(16, 300, torch.float32, 0.7, torch.Generator().manual_seed(3))
    p = rowdelta.encode(w)
    st = rowdelta.steps(p).reshape(-1, 8)
    words = p["deltas"].to(torch.int64) & 0xFFFFFFFF
    lo = ((words & 0x0F0F0F0F) * 0x01010101) & 0xFFFFFFFF
    hi = (((words >> 4) & 0x0F0F0F0F) * 0x01010101) & 0xFFFFFFFF
    for j in range(4):
        assert torch.equal((lo >> (8 * j)) & 255, st[:, : j + 1].sum(1))
        assert torch.equal((hi >> (8 * j)) & 255, st[:, 4 : 5 + j].sum(1))


@pytest.mark.parametrize("bad", ["offsets", "steps"])
def test_decode_rejects_inconsistent_tensors(bad):
    p = rowdelta.encode(weight(4, 40, torch.float32, 0.5, torch.Generator().manual_seed(1)))
    if bad == "offsets":
        p["row_offsets"] = p["row_offsets"][:-1]
        with pytest.raises(ValueError, match="do not match"):
            rowdelta.decode(p)
    else:
        p["deltas"] = torch.full_like(p["deltas"], -1)  # every step 15: runs past column 39
        with pytest.raises(ValueError, match="past the last column"):
            rowdelta.decode(p)


@pytest.mark.ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,s1", [(37, 29, 0.5), (130, 67, 0.0), (5, 300, 0.9), (64, 1000, 0.6), (8, 16, 1.0)])
@pytest.mark.parametrize("tokens", [1, 3])
def test_cpu_kernel_matches_reference(dtype, n, k, s1, tokens):
    gen = torch.Generator().manual_seed(n + k + tokens)
    w = weight(n, k, dtype, s1, gen)
    x = torch.randn(tokens, k, generator=gen).to(dtype)
    p = rowdelta.encode(w)
    y = ops.rowdelta_matvec(x, p, backend="cpu")
    assert rel_err(y, ref.rowdelta_matvec(x, p)) <= TOL[dtype]


@pytest.mark.ext
def test_cpu_kernel_checks_its_input():
    p = rowdelta.encode(weight(4, 40, torch.float32, 0.5, torch.Generator().manual_seed(1)))
    x = torch.randn(1, 40)
    with pytest.raises(ValueError, match="channels"):
        ops.rowdelta_matvec(torch.randn(1, 41), p, backend="cpu")
    with pytest.raises(ValueError, match="dtype|float"):
        ops.rowdelta_matvec(x.half(), p, backend="cpu")
    bad = dict(p, deltas=torch.full_like(p["deltas"], -1))
    with pytest.raises((ValueError, RuntimeError), match="past the last column"):
        ops.rowdelta_matvec(x, bad, backend="cpu")
    bad = dict(p, row_offsets=p["row_offsets"].flip(0).contiguous())
    with pytest.raises((ValueError, RuntimeError), match="row_offsets"):
        ops.rowdelta_matvec(x, bad, backend="cpu")
