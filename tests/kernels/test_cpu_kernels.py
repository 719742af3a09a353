"""The compiled CPU kernels (every SIMD path this CPU has) against the reference."""
from __future__ import annotations

import pytest
import torch

from sparsekit import _ext, ops
from sparsekit.formats import spdp, spinfer
from sparsekit.kernels import reference as ref

from ._util import DTYPES, TOL, rel_err, threshold_for, weight

pytestmark = pytest.mark.ext

SIZES = [(37, 29), (130, 67), (5, 300)]  # (K, N): odd, tiny K, N not a multiple of any tile
TOKENS = (1, 3, 17, 40)  # 40: the prefill path (gathered rows + GEMM)
SPARSITIES = (0.0, 0.5, 1.0)


def _isas():
    out = []
    for isa in ("avx512", "avx2", "base"):
        try:
            torch.ops.sparsekit._cpu_isa(isa)
            out.append(isa)
        except (ValueError, RuntimeError):
            pass
    torch.ops.sparsekit._cpu_isa("")
    return out


@pytest.fixture(params=_isas() if _ext.load() is not None else [])
def isa(request):
    before = torch.ops.sparsekit._cpu_isa("")
    assert torch.ops.sparsekit._cpu_isa(request.param) == request.param
    yield request.param
    torch.ops.sparsekit._cpu_isa(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ops_match_reference(isa, dtype):
    g = torch.Generator().manual_seed(7)
    for k, n in SIZES:
        w = weight(n, k, dtype, 0.5, g)
        w_t = w.t().contiguous()
        packs = {r: spdp.encode(w, r) for r in (32, 64, 128)}
        sp = spinfer.encode(w)
        for t in TOKENS:
            x = torch.randn(t, k, generator=g).to(dtype)
            for s2 in SPARSITIES:
                thr = threshold_for(x, s2)
                case = f"{isa} {dtype} K={k} N={n} T={t} s2={s2}"
                sel = ref.select(x, thr)
                got = ops.select(x, thr, backend="cpu")
                m = int(sel[2][0])
                assert torch.equal(got[0], sel[0]) and torch.equal(got[2], sel[2]), case
                assert torch.equal(got[1][:m], sel[1][:m]), case
                r = ref.teal_matvec(x, w_t, thr)
                assert rel_err(ops.teal_matvec(x, w_t, thr, backend="cpu"), r) <= TOL[dtype], case
                assert rel_err(ops.teal_matvec_sel(*sel, w_t, backend="cpu"), r) <= TOL[dtype], case
                for rows, p in packs.items():
                    assert rel_err(ops.spdp_matvec(x, p, thr, backend="cpu"), r) <= TOL[dtype], (case, rows)
                    assert rel_err(ops.spdp_matvec_sel(*sel, p, backend="cpu"), r) <= TOL[dtype], (case, rows)
            assert rel_err(ops.spinfer_matmul(x, sp, backend="cpu"), ref.spinfer_matmul(x, sp)) <= TOL[dtype], case


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_weights_and_leading_dims(isa, dtype):
    k, n = 70, 45
    w = torch.zeros(n, k, dtype=dtype)
    x = torch.randn(2, 3, k).to(dtype)
    for y in (ops.teal_matvec(x, w.t().contiguous(), 0.1, backend="cpu"), ops.spdp_matvec(x, spdp.encode(w), 0.1, backend="cpu"),
              ops.spinfer_matmul(x, spinfer.encode(w), backend="cpu")):
        assert y.shape == (2, 3, n) and y.dtype == dtype and not y.any()
    w = weight(n, k, dtype)
    r = ref.teal_matvec(x, w.t().contiguous(), 0.3)
    assert r.shape == (2, 3, n)
    assert rel_err(ops.teal_matvec(x, w.t().contiguous(), 0.3, backend="cpu"), r) <= TOL[dtype]
    assert rel_err(ops.spdp_matvec(x, spdp.encode(w, 64), 0.3, backend="cpu"), r) <= TOL[dtype]


def test_threshold_compares_in_x_dtype():
    # 0.30078125 is a bfloat16 number; the threshold 0.3 rounds to it in bf16, so x is NOT kept
    x = torch.tensor([[0.30078125, 1.0]], dtype=torch.bfloat16)
    got = ops.select(x, 0.3, backend="cpu")
    want = ref.select(x, 0.3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


def test_sel_keeps_given_channels_and_rejects_bad_ones():
    x = torch.randn(2, 9)
    w_t = torch.randn(9, 4)
    idx = torch.tensor([4, 1, 7], dtype=torch.int32)
    nnz = torch.tensor([2], dtype=torch.int32)
    want = x[:, [4, 1]] @ w_t[[4, 1]]
    assert torch.allclose(ops.teal_matvec_sel(x, idx, nnz, w_t, backend="cpu"), want, atol=1e-6)
    with pytest.raises(ValueError):
        ops.teal_matvec_sel(x, torch.tensor([9], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), w_t, backend="cpu")
    with pytest.raises(ValueError):
        ops.teal_matvec(torch.randn(1, 8), w_t, 0.0, backend="cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_ops_match_reference(isa, dtype):
    """teal/spdp_matvec_rel on the cpu backend (the mask in torch, then the compiled plain op)."""
    g = torch.Generator().manual_seed(4)
    for (k, n), t in zip(SIZES, TOKENS):
        x = torch.randn(t, k, generator=g).to(dtype)
        x[0] *= 20.0  # tokens of different scales: the relative rule keeps different channels
        w = weight(n, k, dtype, 0.5, g)
        assert rel_err(ops.teal_matvec_rel(x, w.t().contiguous(), 1.1, backend="cpu"),
                       ref.teal_matvec_rel(x, w.t().contiguous(), 1.1)) <= TOL[dtype]
        p = spdp.encode(w, 64)
        assert rel_err(ops.spdp_matvec_rel(x, p, 1.1, backend="cpu"), ref.spdp_matvec_rel(x, p, 1.1)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_glu_ops_match_reference(isa, dtype):
    """teal/spdp_matvec_glu on the cpu backend (silu(gate) * up in torch, then the compiled plain op)."""
    g = torch.Generator().manual_seed(5)
    for (k, n), t in zip(SIZES, TOKENS):
        gu = (2.0 * torch.randn(t, 2 * k, generator=g)).to(dtype)
        w = weight(n, k, dtype, 0.5, g)
        want = ref.teal_matvec_glu(gu, w.t().contiguous(), 0.2)
        assert torch.equal(want, ref.teal_matvec(ref.silu_mul(gu), w.t().contiguous(), 0.2))
        assert rel_err(ops.teal_matvec_glu(gu, w.t().contiguous(), 0.2, backend="cpu"), want) <= TOL[dtype]
        p = spdp.encode(w, 64)
        assert rel_err(ops.spdp_matvec_glu(gu, p, 0.2, backend="cpu"), ref.spdp_matvec_glu(gu, p, 0.2)) <= TOL[dtype]


def test_fakes_and_schemas():
    x = torch.randn(3, 40)
    w = weight(24, 40, torch.float32)
    p = spdp.encode(w, 32)
    s = spinfer.encode(w)
    xs, idx, nnz = ref.select(x, 0.5)
    sk = torch.ops.sparsekit
    cases = [
        (sk.select.default, (x, 0.5)),
        (sk.teal_matvec.default, (x, w.t().contiguous(), 0.5)),
        (sk.teal_matvec_sel.default, (xs, idx, nnz, w.t().contiguous())),
        (sk.spdp_matvec.default, (x, p["values"], p["bitmap"], p["offsets"], 24, 32, 0.5)),
        (sk.spdp_matvec_sel.default, (xs, idx, nnz, p["values"], p["bitmap"], p["offsets"], 24, 32)),
        (sk.spinfer_matmul.default, (x, s["values"], s["bitmaps"], s["tile_offsets"], s["group_offsets"], 24, 40)),
        (sk.spdp_decode.default, (p["values"], p["bitmap"], p["offsets"], 24, 40, 32)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_spdp_decode_is_bit_exact(dtype, tile_rows):
    """The prefill path's decode gives W back bit for bit: -0.0, NaN and subnormal payloads included."""
    gen = torch.Generator().manual_seed(tile_rows)
    for n, k, s1 in ((1, 1, 0.0), (37, 29, 0.5), (130, 67, 0.9), (200, 5, 0.3), (64, 128, 1.0)):
        w = weight(n, k, dtype, s1, gen)
        if n * k > 4:
            flat = w.view(-1)
            flat[0], flat[1] = float("nan"), -0.0
            flat[2] = torch.finfo(dtype).tiny / 4  # subnormal
        p = spdp.encode(w, tile_rows)
        got = ops.spdp_decode(p, backend="cpu")
        assert got.dtype == dtype and got.shape == (n, k)
        assert torch.equal(_bits(got), _bits(w)), (n, k, s1)
    for n, k in ((0, 5), (6, 0)):
        p = spdp.encode(torch.zeros(n, k, dtype=dtype), tile_rows)
        assert ops.spdp_decode(p, backend="cpu").shape == (n, k)


def test_spdp_decode_rejects_offsets_past_values():
    p = spdp.encode(weight(40, 9, torch.float32, 0.5), 32)
    sk = torch.ops.sparsekit
    with pytest.raises(ValueError, match="offsets"):
        sk.spdp_decode(p["values"][:-3], p["bitmap"], p["offsets"], 40, 9, 32)
    bad = p["offsets"].clone()
    bad[5] += 1000  # one column's run points far past the values (the last offset is intact)
    with pytest.raises(ValueError, match="past the end"):
        sk.spdp_decode(p["values"], p["bitmap"], bad, 40, 9, 32)
    with pytest.raises(ValueError, match="bitmap must be int32"):
        sk.spdp_decode(p["values"], p["bitmap"][:-1], p["offsets"], 40, 9, 32)


def test_mixed_dtypes_follow_x():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 50, generator=g)  # float32 activations
    w = weight(40, 50, torch.bfloat16, 0.5, g)  # bfloat16 weights
    thr = threshold_for(x, 0.5)
    r = ref.teal_matvec(x, w.t().contiguous(), thr)
    assert r.dtype == torch.float32
    assert rel_err(ops.teal_matvec(x, w.t().contiguous(), thr, backend="cpu"), r) <= TOL[torch.float32]
    assert rel_err(ops.spdp_matvec(x, spdp.encode(w, 32), thr, backend="cpu"), r) <= TOL[torch.float32]
    s = spinfer.encode(w)
    assert rel_err(ops.spinfer_matmul(x, s, backend="cpu"), ref.spinfer_matmul(x, s)) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_teal_channel_split_matches_reference(isa, threads, dtype):
    """One token with few output columns: the active channels are split between threads (each part
    accumulates whole rows, then the parts are summed); any thread count gives the reference."""
    g = torch.Generator().manual_seed(3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k, n, s2 in [(1001, 301, 0.5), (700, 4096, 0.0), (513, 67, 0.9), (300, 4097, 0.5)]:
            w_t = weight(n, k, dtype, 0.0, g).t().contiguous()
            x = torch.randn(1, k, generator=g).to(dtype)
            thr = threshold_for(x, s2)
            r = ref.teal_matvec(x, w_t, thr)
            y = ops.teal_matvec(x, w_t, thr, backend="cpu")
            assert rel_err(y, r) <= TOL[dtype], (isa, threads, dtype, k, n, s2)
            assert torch.equal(y, ops.teal_matvec(x, w_t, thr, backend="cpu"))  # deterministic
    finally:
        torch.set_num_threads(before)


def test_compiled_checks_reach_python_whole():
    """A failed multi-part check inside the compiled library reaches Python as one ValueError with
    the whole sentence. Linked against a private libstdc++ whose symbols leaked (g++ -static-libstdc++
    without `--exclude-libs`, as some images do), the message stopped after its first piece on this
    machine and the process crashed on the H200 image (NOTES, seventh and eighth sessions)."""
    sk = torch.ops.sparsekit
    with pytest.raises(ValueError, match=r"^x has 5 channels but w_t has shape \[4, 3\] \(expected \[K, N\]\)"):
        sk.teal_matvec(torch.randn(2, 5), torch.randn(4, 3), 0.1)
    with pytest.raises(ValueError, match="tile_rows must be 32, 64 or 128, got 48"):
        sk.spdp_decode(torch.zeros(0, dtype=torch.float16), torch.zeros(0, dtype=torch.int32),
                       torch.zeros(1, dtype=torch.int32), 4, 4, 48)
