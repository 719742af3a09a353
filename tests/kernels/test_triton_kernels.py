"""Triton kernels against the reference: on the GPU when there is one, else in the interpreter
(``TRITON_INTERPRET=1``, set by tests/conftest.py). Small odd shapes: the interpreter is slow."""
from __future__ import annotations

import os

import pytest
import torch

from sparsekit import ops
from sparsekit.formats import rowdelta, spdp, spinfer
from sparsekit.kernels import reference as ref

from ._util import DTYPES, TOL, rel_err, threshold_for, weight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU needs TRITON_INTERPRET=1"
)
CASES = [(37, 29, 1, 0.5), (70, 67, 3, 0.0), (50, 130, 17, 0.5), (33, 40, 2, 1.0)]  # K, N, T, s2


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference(dtype):
    from sparsekit.kernels.triton import spdp as tspdp
    from sparsekit.kernels.triton import teal as tteal

    g = torch.Generator().manual_seed(11)
    for k, n, t, s2 in CASES:
        x = torch.randn(t, k, generator=g).to(dtype).to(DEVICE)
        thr = threshold_for(x, s2)
        w = weight(n, k, dtype, 0.5, g, DEVICE)
        w_t = w.t().contiguous()
        case = f"{dtype} K={k} N={n} T={t} s2={s2}"
        sel = ref.select(x, thr)
        got = ops.select(x, thr, backend="triton")
        m = int(sel[2][0])
        assert torch.equal(got[0], sel[0]) and torch.equal(got[2], sel[2]) and torch.equal(got[1][:m], sel[1][:m]), case
        r = ref.teal_matvec(x, w_t, thr)
        assert rel_err(ops.teal_matvec(x, w_t, thr, backend="triton"), r) <= TOL[dtype], case
        assert rel_err(ops.teal_matvec_sel(*sel, w_t, backend="triton"), r) <= TOL[dtype], case
        assert rel_err(tteal.teal_matvec(x, w_t, thr, split=3), r) <= TOL[dtype], case  # split-K + reduction
        rows = (32, 64, 128)[k % 3]
        p = {key: v.to(DEVICE) for key, v in spdp.encode(w, rows).items()}
        assert rel_err(ops.spdp_matvec(x, p, thr, backend="triton"), r) <= TOL[dtype], case
        assert rel_err(ops.spdp_matvec_sel(*sel, p, backend="triton"), r) <= TOL[dtype], case
        assert rel_err(tspdp.spdp_matvec(x, p["values"], p["bitmap"], p["offsets"], n, rows, thr, split=2), r) <= TOL[dtype], case
        s = {key: v.to(DEVICE) for key, v in spinfer.encode(w).items()}
        assert rel_err(ops.spinfer_matmul(x, s, backend="triton"), ref.spinfer_matmul(x, s)) <= TOL[dtype], case
        rd = {key: v.to(DEVICE) for key, v in rowdelta.encode(w).items()}
        assert rel_err(ops.rowdelta_matvec(x, rd, backend="triton"), ref.rowdelta_matvec(x, rd)) <= TOL[dtype], case
        rr = ref.teal_matvec_rel(x, w_t, 1.2)  # the relative rule: masked in torch, then the Triton op
        assert rel_err(ops.teal_matvec_rel(x, w_t, 1.2, backend="triton"), rr) <= TOL[dtype], case
        assert rel_err(ops.spdp_matvec_rel(x, p, 1.2, backend="triton"), rr) <= TOL[dtype], case
        gu = torch.cat([x, x.flip(-1)], dim=-1)  # the SwiGLU input: the product in torch, then the Triton op
        rg = ref.teal_matvec_glu(gu, w_t, 0.1)
        assert rel_err(ops.teal_matvec_glu(gu, w_t, 0.1, backend="triton"), rg) <= TOL[dtype], case
        assert rel_err(ops.spdp_matvec_glu(gu, p, 0.1, backend="triton"), rg) <= TOL[dtype], case


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_spdp_decode_is_bit_exact(dtype):
    g = torch.Generator().manual_seed(13)
    for n, k, rows, s1 in [(37, 29, 32, 0.5), (130, 67, 64, 0.7), (65, 70, 128, 0.0), (33, 40, 32, 1.0)]:
        w = weight(n, k, dtype, s1, g, DEVICE)
        p = {key: v.to(DEVICE) for key, v in spdp.encode(w, rows).items()}
        p["shape"] = tuple(p["shape"].tolist())
        got = ops.spdp_decode(p, backend="triton")
        assert got.dtype == w.dtype and got.shape == (n, k)
        assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           w.view(torch.int16 if dtype != torch.float32 else torch.int32)), (dtype, n, k, rows)
        assert torch.equal(ops.spdp_decode(p, backend="reference"), w)


def test_triton_split_is_deterministic():
    from sparsekit.kernels.triton import teal as tteal

    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 300, generator=g).to(DEVICE)
    w_t = torch.randn(300, 70, generator=g).to(DEVICE)
    a = tteal.teal_matvec(x, w_t, 0.2, split=4)
    b = tteal.teal_matvec(x, w_t, 0.2, split=4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_rowdelta_long_rows_fillers_and_empty_rows(dtype):
    """Rows longer than one block of vectors, gaps past 15 columns, an empty row."""
    g = torch.Generator().manual_seed(5)
    w = weight(6, 700, dtype, 0.9, g)
    w[2] = 0
    w[3, :] = 0
    w[3, 650] = 1.5
    w[4] = weight(1, 700, dtype, 0.0, g)[0]  # 700 entries: 88 vectors, 3 blocks
    x = torch.randn(2, 700, generator=g).to(dtype).to(DEVICE)
    rd = {key: v.to(DEVICE) for key, v in rowdelta.encode(w.to(DEVICE)).items()}
    y = ops.rowdelta_matvec(x, rd, backend="triton")
    assert rel_err(y, ref.rowdelta_matvec(x, rd)) <= TOL[dtype]
    assert not y[:, 2].any()
