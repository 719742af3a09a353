"""The CUDA kernels (csrc/cuda) against the PyTorch reference, on fresh random inputs.

Every op, fp16 / bf16 / fp32, one token, a few tokens, more tokens than one block handles, odd
sizes, empty selections; outputs are poisoned with NaN before each call so an unwritten element
fails; results must be bitwise deterministic, survive CUDA-graph capture, and not depend on how the
input channels are split across blocks. Run on the GPU machine (benchmarks/gpu_cuda.sh).
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# ||out - ref|| / ||ref||: both are rounded to the output dtype, so the bound is about one ulp
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 2e-5}


@pytest.fixture(scope="module")
def ops():
    from sparsekit import _ext, ops

    assert _ext.has_cuda(), f"sparsekit._C was built without the CUDA kernels ({_ext.reason})"
    return ops


@pytest.fixture(scope="module")
def ref():
    from sparsekit.kernels import reference

    return reference


@pytest.fixture
def tune():
    """Set a knob of the CUDA kernels for one test (restored afterwards)."""
    old = {}

    def set_(key: str, value: int) -> None:
        prev = torch.ops.sparsekit_cuda.tune(key, value)
        old.setdefault(key, prev)

    yield set_
    for key, value in old.items():
        torch.ops.sparsekit_cuda.tune(key, value)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _poison(*shapes, dtype) -> None:
    """Fill freed blocks of these sizes with NaN, so an output the kernel leaves unwritten is NaN."""
    junk = [torch.full(s, float("nan"), dtype=dtype, device="cuda") for s in shapes]
    del junk


def _x(shape, dtype, seed, sparsity=0.0):
    """Random activations and the threshold that zeroes about `sparsity` of them."""
    x = torch.randn(shape, generator=_gen(seed), device="cuda").to(dtype)
    thr = float(x.float().abs().flatten().quantile(sparsity)) if sparsity > 0 else 0.0
    return x, thr


def _weight(n, k, dtype, seed, sparsity=0.0):
    w = torch.randn((n, k), generator=_gen(seed), device="cuda") * 0.05
    if sparsity > 0:
        w[torch.rand((n, k), generator=_gen(seed + 1), device="cuda") < sparsity] = 0
    return w.to(dtype)


def _check(out, expect, dtype):
    assert out.shape == expect.shape and out.dtype == expect.dtype
    assert torch.isfinite(out).all(), "non-finite output (unwritten element?)"
    err = (out.double() - expect.double()).norm() / expect.double().norm().clamp_min(1e-30)
    assert err < TOL[dtype], f"relative error {err:.2e} >= {TOL[dtype]:.0e}"


# ------------------------------------------------------------------------------------------ select
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4096), (1, 11008), (1, 77), (3, 1000), (2, 5, 333), (64, 2056)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.97])
def test_select_matches_reference(ops, ref, dtype, shape, sparsity):
    x, thr = _x(shape, dtype, seed=hash((shape, sparsity)) % 1000, sparsity=sparsity)
    _poison(shape, dtype=dtype)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    rxs, ridx, rnnz = ref.select(x, thr)
    assert xs.dtype == x.dtype and xs.shape == x.shape and idx.dtype == torch.int32 and nnz.dtype == torch.int32
    assert nnz.device == x.device and nnz.shape == (1,)
    assert torch.equal(xs, rxs)
    n = int(rnnz)
    assert int(nnz) == n
    assert torch.equal(idx[:n], ridx[:n])


def test_select_all_masked_and_threshold_rounding(ops, ref):
    x = torch.full((2, 100), 0.3, dtype=torch.float16, device="cuda")
    # torch compares |x| > t in x's dtype: half(0.3) == x, so nothing is kept
    xs, idx, nnz = ops.select(x, 0.3, backend="cuda")
    assert int(nnz) == 0 and not xs.any()
    rxs, _, rnnz = ref.select(x, 0.3)
    assert int(rnnz) == 0 and torch.equal(xs, rxs)


# -------------------------------------------------------------------------------------------- teal
TEAL_SHAPES = [  # (leading dims, K, N)
    ((1,), 4096, 4096),
    ((1,), 13000, 264),  # one token, long K: several list passes per block
    ((1,), 1000, 2048),
    ((1,), 333, 777),   # odd N: the scalar path
    ((1,), 256, 40),
    ((3,), 1000, 2048),
    ((2, 4), 512, 1032),
    ((17,), 300, 520),  # more tokens than one block handles
    ((70,), 128, 264),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k,n", TEAL_SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_teal_matches_reference(ops, ref, dtype, lead, k, n, sparsity):
    seed = hash((lead, k, n, sparsity)) % 1000
    x, thr = _x((*lead, k), dtype, seed, sparsity)
    w_t = _weight(k, n, dtype, seed + 7)
    expect = ref.teal_matvec(x, w_t, thr)
    _poison((*lead, n), dtype=dtype)
    _check(ops.teal_matvec(x, w_t, thr, backend="cuda"), expect, dtype)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    _poison((*lead, n), dtype=dtype)
    _check(ops.teal_matvec_sel(xs, idx, nnz, w_t, backend="cuda"), ref.teal_matvec_sel(xs, idx, nnz, w_t), dtype)


@pytest.mark.parametrize("lpr", [8, 16, 32])
@pytest.mark.parametrize("split", [1, 3, 8])
def test_teal_tilings_agree(ops, ref, tune, lpr, split):
    tune("teal_lpr", lpr)
    tune("split", split)
    x, thr = _x((1, 2048), torch.bfloat16, seed=lpr + split, sparsity=0.5)
    w_t = _weight(2048, 3072, torch.bfloat16, seed=3)
    _check(ops.teal_matvec(x, w_t, thr, backend="cuda"), ref.teal_matvec(x, w_t, thr), torch.bfloat16)
    assert torch.ops.sparsekit_cuda.tune("last_split") == split


def test_teal_everything_masked_gives_zeros(ops):
    x = torch.full((3, 256), 0.01, dtype=torch.float16, device="cuda")
    w_t = _weight(256, 512, torch.float16, seed=1)
    _poison((3, 512), dtype=torch.float16)
    y = ops.teal_matvec(x, w_t, 0.5, backend="cuda")
    assert torch.equal(y, torch.zeros_like(y))


# ---------------------------------------------------------------- teal, the one-token kernel (teal1)
TEAL1_SHAPES = [  # (K, N)
    (4096, 4096),
    (11008, 1024),  # several list passes per warp at 256 threads; several gather rounds in _sel
    (1000, 2048),
    (1004, 520),  # K % 8 != 0: fused fp16/bf16 go to matvec.cuh, _sel and fp32 stay on teal1
    (24, 40),  # fewer channel vectors than warps
]
TEAL1_GEOMS = [(0, 0), (256, 4), (512, 8), (1024, 16), (256, 32)]  # (threads, lanes per row), 0 = automatic


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", TEAL1_SHAPES)
@pytest.mark.parametrize("threads,lpr", TEAL1_GEOMS)
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_teal1_matches_reference(ops, ref, tune, dtype, k, n, threads, lpr, sparsity):
    tune("teal1", 1)
    tune("teal1_threads", threads)
    tune("teal1_lpr", lpr)
    seed = hash((k, n, threads, lpr, sparsity)) % 1000
    x, thr = _x((1, k), dtype, seed, sparsity)
    w_t = _weight(k, n, dtype, seed + 7)
    _poison((1, n), dtype=dtype)
    _check(ops.teal_matvec(x, w_t, thr, backend="cuda"), ref.teal_matvec(x, w_t, thr), dtype)
    vec = 16 // x.element_size()
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == (1 if k % vec == 0 else 0)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    _poison((1, n), dtype=dtype)
    _check(ops.teal_matvec_sel(xs, idx, nnz, w_t, backend="cuda"), ref.teal_matvec_sel(xs, idx, nnz, w_t), dtype)
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_teal1_edge_cases(ops, ref, tune, dtype):
    tune("teal1", 1)
    k, n = 2048, 1024
    x, _ = _x((1, k), dtype, seed=31)
    x[0, ::7] = 0
    x[0, 5] = float("nan")  # |nan| > t is false: dropped, as in the reference
    w_t = _weight(k, n, dtype, seed=32)
    for thr in (-1.0, 0.0, 0.7, 1e9):  # -1 keeps the zeros too; 1e9 keeps nothing
        expect = ref.teal_matvec(x, w_t, thr)
        _poison((1, n), dtype=dtype)
        out = ops.teal_matvec(x, w_t, thr, backend="cuda")
        assert torch.ops.sparsekit_cuda.tune("last_teal1") == 1
        if thr == 1e9:
            assert torch.equal(out, torch.zeros_like(out))
        else:
            _check(out, expect, dtype)
    # _sel with nnz = 0 and with a list shorter than K
    xs, idx, nnz = ops.select(x, 0.7, backend="cuda")
    for cut in (0, 1, int(nnz) // 3):
        short = torch.tensor([cut], dtype=torch.int32, device="cuda")
        _poison((1, n), dtype=dtype)
        out = ops.teal_matvec_sel(xs, idx, short, w_t, backend="cuda")
        if cut == 0:
            assert torch.equal(out, torch.zeros_like(out))
        else:
            _check(out, ref.teal_matvec_sel(xs, idx, short, w_t), dtype)


def test_teal1_deterministic_and_graph_capture(ops, tune):
    for knobs in ({"teal1": 1}, {"teal1": 1, "pdl": 1}):
        for key, value in knobs.items():
            tune(key, value)
        x, thr = _x((1, 4096), torch.bfloat16, seed=41, sparsity=0.5)
        w_t = _weight(4096, 4096, torch.bfloat16, seed=42)
        first = ops.teal_matvec(x, w_t, thr, backend="cuda")
        xs, idx, nnz = ops.select(x, thr, backend="cuda")
        first_sel = ops.teal_matvec_sel(xs, idx, nnz, w_t, backend="cuda")
        for _ in range(3):
            assert torch.equal(ops.teal_matvec(x, w_t, thr, backend="cuda"), first)
            assert torch.equal(ops.teal_matvec_sel(xs, idx, nnz, w_t, backend="cuda"), first_sel)
        static_x = x.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sx, si, sn = ops.select(static_x, thr, backend="cuda")
            outs = [ops.teal_matvec(static_x, w_t, thr, backend="cuda"), ops.teal_matvec_sel(sx, si, sn, w_t, backend="cuda")]
        for seed in (5, 6):
            static_x.copy_(_x(x.shape, x.dtype, seed=seed)[0])
            graph.replay()
            torch.cuda.synchronize()
            ex, ei, en = ops.select(static_x, thr, backend="cuda")
            assert torch.equal(outs[0], ops.teal_matvec(static_x, w_t, thr, backend="cuda"))
            assert torch.equal(outs[1], ops.teal_matvec_sel(ex, ei, en, w_t, backend="cuda"))
        assert torch.ops.sparsekit_cuda.tune("last_teal1") == 1


def test_teal_default_paths(ops, tune):
    """Default: matvec.cuh for every call; tune("teal1", 1): the one-token kernel for T = 1 only."""
    x, thr = _x((1, 4096), torch.float16, seed=51, sparsity=0.5)
    w_t = _weight(4096, 11008, torch.float16, seed=52)
    ops.teal_matvec(x, w_t, thr, backend="cuda")
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 0
    tune("teal1", 1)
    ops.teal_matvec(x, w_t, thr, backend="cuda")
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 1
    ops.teal_matvec_sel(*ops.select(x, thr, backend="cuda"), w_t, backend="cuda")
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 1
    ops.teal_matvec(torch.cat([x, x]), w_t, thr, backend="cuda")
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 0


def test_teal_misaligned_x(ops, ref, tune):
    big, thr = _x((1, 4097), torch.float16, seed=61, sparsity=0.5)
    x = big[:, 1:]  # contiguous, but 2 bytes past a 16-byte boundary
    w_t = _weight(4096, 4096, torch.float16, seed=62)
    _check(ops.teal_matvec(x, w_t, thr, backend="cuda"), ref.teal_matvec(x, w_t, thr), torch.float16)
    tune("teal1", 1)  # the fused one-token kernel needs 16-byte x loads: matvec.cuh takes the call
    _check(ops.teal_matvec(x, w_t, thr, backend="cuda"), ref.teal_matvec(x, w_t, thr), torch.float16)
    assert torch.ops.sparsekit_cuda.tune("last_teal1") == 0


# -------------------------------------------------------------------------------------------- spdp
SPDP_SMALL = [((1,), 2048, 1024), ((1,), 301, 100), ((4,), 640, 300), ((9,), 256, 130)]
SPDP_CASES = [
    (dtype, r, lead, k, n, s1, s2)
    for dtype in DTYPES
    for r in (32, 64, 128)
    for lead, k, n in SPDP_SMALL
    for s1, s2 in ((0.5, 0.5), (0.0, 0.0), (0.8, 0.3))
] + [(dtype, r, (1,), 4096, 11008, 0.5, 0.5) for dtype in (torch.float16, torch.bfloat16) for r in (32, 64, 128)]


@pytest.mark.parametrize("dtype,tile_rows,lead,k,n,s1,s2", SPDP_CASES)
def test_spdp_matches_reference(ops, ref, dtype, tile_rows, lead, k, n, s1, s2):
    from sparsekit.formats import spdp

    seed = hash((lead, k, n, s1, s2, tile_rows)) % 1000
    x, thr = _x((*lead, k), dtype, seed, s2)
    w = _weight(n, k, dtype, seed + 3, s1)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}
    expect = ref.spdp_matvec(x, packed, thr)
    _poison((*lead, n), dtype=dtype)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), expect, dtype)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    _poison((*lead, n), dtype=dtype)
    _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"), ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_spdp_decode_is_bit_exact(ops, ref, tune, dtype, tile_rows):
    """The prefill path's CUDA decode against the reference, bit for bit, on a NaN-poisoned output.
    16-bit values with K % 8 == 0 run the tensor-core kernel's copy/expansion pipeline (K = 11008,
    4096, 128, 136: a last chunk of 8 columns; N past the last full tile; 2:4-over-rows weights, whose
    units take the balanced expansion); fp32 values, other K, or tune("spdp_mm", 2) the one-pass kernel
    (16-byte row stores where K is a multiple of 16 bytes of elements, else one element per store).
    NaN and -0.0 values, empty and full tiles."""
    from sparsekit.formats import spdp

    bits = {2: torch.int16, 4: torch.int32}[torch.empty((), dtype=dtype).element_size()]
    cases = [_weight(n, k, dtype, 50 + i, s1) for i, (n, k, s1) in enumerate(
        ((1, 1, 0.0), (301, 100, 0.5), (130, 67, 0.9), (4096, 11008, 0.5), (11008, 4096, 0.7), (100, 65, 0.0),
         (33, 128, 1.0), (200, 136, 0.5)))]
    for w in cases:
        n, k = w.shape
        if n * k > 2:
            w.view(-1)[0], w.view(-1)[1] = float("nan"), -0.0
    balanced = _weight_24out(520, 1032, dtype, 58)
    for w in cases + [balanced]:
        n, k = w.shape
        packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}
        expect = ref.spdp_decode(packed)
        for knob in (0, 2):
            tune("spdp_mm", knob)
            tune("spdp_bal", 1 if w is balanced else 0)  # every unit balanced, or a trap
            _poison((n, k), dtype=dtype)
            got = ops.spdp_decode(packed, backend="cuda")
            ran_mm = torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1)
            assert ran_mm == (1 if knob == 0 and dtype != torch.float32 and k % 8 == 0 else 0), (n, k, knob)
            assert got.shape == (n, k) and got.dtype == dtype
            assert torch.equal(got.view(bits), expect.view(bits)), (n, k, knob)
            assert torch.equal(got.view(bits), w.view(bits))


# one-token spdp instantiations: the staged and nibble kernels (16-bit values), the deep one, the plain one
SPDP_VARIANTS = {"stage": {"spdp_stage": 1}, "nib": {"spdp_stage": 2, "spdp_nib": 1},
                 "deep": {"spdp_stage": 2, "spdp_nib": 2, "spdp_deep": 1},
                 "plain": {"spdp_stage": 2, "spdp_nib": 2, "spdp_deep": 2}}
SPDP_ONE_TOKEN_CASES = [(dtype, r, k, n, variant) for dtype in DTYPES for r in (32, 64, 128)
                        for k, n in ((2048, 1024), (301, 100), (4096, 11008), (11008, 4096), (37, 5))
                        for variant in SPDP_VARIANTS]


@pytest.mark.parametrize("dtype,tile_rows,k,n,variant", SPDP_ONE_TOKEN_CASES)
def test_spdp_one_token_variants_match_reference(ops, ref, tune, dtype, tile_rows, k, n, variant):
    """T = 1 through each instantiation: stage (values copied through shared memory) and nib (a lane
    owns 4 rows), where fp32 falls through to the others, deep (256 threads, more columns in flight)
    and plain."""
    from sparsekit.formats import spdp

    seed = hash(("deep", k, n, tile_rows)) % 1000
    x, thr = _x((1, k), dtype, seed, 0.5)
    w = _weight(n, k, dtype, seed + 3, 0.5)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}
    for key, value in SPDP_VARIANTS[variant].items():
        tune(key, value)
    _poison((1, n), dtype=dtype)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    _poison((1, n), dtype=dtype)
    _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"), ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)


def _spdp_shifted(w, tile_rows, shift):
    """w in the spdp format on the GPU, its values starting `shift` elements into a NaN-filled storage
    that ends right after the last value."""
    from sparsekit.formats import spdp

    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}
    store = torch.full((packed["values"].numel() + shift,), float("nan"), dtype=w.dtype, device="cuda")
    store[shift:] = packed["values"]
    packed["values"] = store[shift:]
    return packed


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("shift", (1, 2, 4))
@pytest.mark.parametrize("density", (0.05, 0.5, 1.0))
def test_spdp_nib_reads_values_at_any_offset(ops, ref, tune, dtype, shift, density):
    """The nibble kernel loads 8-byte words of values: values that start `shift` elements into their
    storage (not 8-byte aligned for 1 and 2: the plain kernel runs; aligned for 4), and runs that
    end at the tensor's last element (the tail loads 16-bit values), give the reference's result."""
    k, n = 333, 203
    x, thr = _x((1, k), dtype, 90 + shift, 0.3)
    w = _weight(n, k, dtype, 91 + shift, 1.0 - density)
    for r in (32, 64, 128):
        packed = _spdp_shifted(w, r, shift)
        tune("spdp_stage", 2)
        tune("spdp_nib", 1)
        _poison((1, n), dtype=dtype)
        _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
        xs, idx, nnz = ops.select(x, thr, backend="cuda")
        _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"),
               ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("shift", (0, 1, 8, 13))
@pytest.mark.parametrize("density", (0.05, 0.5, 1.0))
def test_spdp_stage_copies_aligned_spans(ops, ref, tune, dtype, shift, density):
    """The staged kernel copies each active column's values as the 16-byte-aligned span around them:
    values that start `shift` elements into their storage (8 keeps 16-byte alignment, so the staged
    kernel runs with spans starting at every offset; 1 and 13 fall back to the other kernels), and a
    storage that ends right after the last value (the last span is zero-filled past the end), give
    the reference's result at every tile size."""
    k, n = 517, 301
    x, thr = _x((1, k), dtype, 70 + shift, 0.4)
    w = _weight(n, k, dtype, 71 + shift, 1.0 - density)
    for r in (32, 64, 128):
        packed = _spdp_shifted(w, r, shift)
        vals = packed["values"]
        assert vals.untyped_storage().nbytes() == (vals.numel() + shift) * vals.element_size()
        tune("spdp_stage", 1)
        _poison((1, n), dtype=dtype)
        _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
        xs, idx, nnz = ops.select(x, thr, backend="cuda")
        _poison((1, n), dtype=dtype)
        _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"),
               ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)


def _weight_24out(n, k, dtype, seed, rows=None):
    """Random weights pruned 2:4 over output rows: in each column, 2 of every 4 consecutive rows are
    zero (rows past the last whole group keep one random non-zero, so a tile ending there does not
    have the pattern). `rows` limits the pattern to those rows (the others: random 50 % zeros)."""
    w = torch.randn((n, k), generator=_gen(seed), device="cuda") * 0.05
    w = torch.where(w.abs() < 1e-3, torch.full_like(w, 1e-3), w)  # no value that rounds to zero in fp16
    g = n // 4
    if g:
        keep = torch.rand((g, 4, k), generator=_gen(seed + 1), device="cuda").argsort(dim=1)[:, :2]
        mask = torch.zeros((g, 4, k), dtype=torch.bool, device="cuda").scatter_(1, keep, True)
        w[: 4 * g].masked_fill_(~mask.reshape(4 * g, k), 0.0)  # +0.0: spdp keeps -0.0 as a value
    if n > 4 * g:
        w[4 * g:].masked_fill_(torch.rand((n - 4 * g, k), generator=_gen(seed + 2), device="cuda") < 0.5, 0.0)
    if rows is not None:
        other = torch.ones(n, dtype=torch.bool, device="cuda")
        other[rows] = False
        w[other] = _weight(int(other.sum()), k, torch.float32, seed + 3, 0.5)
    return w.to(dtype)


def _spdp_cuda(w, tile_rows):
    from sparsekit.formats import spdp

    return {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}


def _check_spdp_forms(ops, ref, x, packed, thr, dtype):
    n = packed["shape"][0]
    _poison((1, n), dtype=dtype)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    _poison((1, n), dtype=dtype)
    _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"), ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)


def _mixed_24out_cases(k, dtype, seed, tile_rows, cols):
    """Weights where only part has the 2:4-over-rows pattern: the rows of one tile; the first `cols`
    columns; N % 8 == 4 and N % 4 != 0; then random 50 % weights and all zero columns."""
    cases = [_weight_24out(300, k, dtype, seed + 1, rows=slice(0, tile_rows)),
             _weight_24out(4 * tile_rows, k, dtype, seed + 2)]
    cases[1][:, cols:] = _weight(4 * tile_rows, k - cols, dtype, seed + 3, 0.5)
    return cases + [_weight_24out(100, k, dtype, seed + 4), _weight_24out(98, k, dtype, seed + 5),
                    _weight(200, k, dtype, seed + 6, 0.5), torch.zeros((64, k), dtype=dtype, device="cuda")]


# the balanced path (2:4 over output rows): K, N with N % 8 == 0 (every tile, the last included, has it)
BAL_SHAPES = [(4096, 11008), (11008, 4096), (301, 104), (37, 8), (5000, 200), (4096, 4096)]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("k,n", BAL_SHAPES)
def test_spdp_balanced_path_matches_reference(ops, ref, tune, dtype, tile_rows, k, n):
    """Weights pruned 2:4 over output rows take the balanced path in every block (spdp_bal=1 makes a
    block that would not trap) through the staged and the nibble kernel, split or not (K = 5000 with
    one slice: three passes of the list), fused and _sel; spdp_bal=2 (the variants' own loops) agrees."""
    seed = hash(("bal", k, n, tile_rows)) % 1000
    x, thr = _x((1, k), dtype, seed, 0.5)
    packed = _spdp_cuda(_weight_24out(n, k, dtype, seed + 3), tile_rows)
    for variant in ({"spdp_stage": 1}, {"spdp_stage": 2, "spdp_nib": 1}):
        for split in (0, 1, 3):
            for key, value in variant.items():
                tune(key, value)
            tune("split", split)
            tune("spdp_bal", 1)
            _check_spdp_forms(ops, ref, x, packed, thr, dtype)
            tune("spdp_bal", 2)
            _check_spdp_forms(ops, ref, x, packed, thr, dtype)
            tune("spdp_bal", 0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_spdp_balanced_path_mixed_and_fallbacks(ops, ref, tune, dtype, tile_rows):
    """Automatic choice where only some blocks or passes have the pattern: rows of one tile only; the
    first 2048 columns only (K = 5000, one slice: the first pass balanced, the others not, both summed
    into one tile); N % 8 == 4 and N % 4 != 0 (the last tile's offsets lose the alignment or the
    pattern); values not 8-byte aligned; unbalanced random weights; all zero columns."""
    seed = hash(("balmix", tile_rows)) % 1000
    k = 5000
    x, thr = _x((1, k), dtype, seed, 0.5)
    for w in _mixed_24out_cases(k, dtype, seed, tile_rows, 2048):
        for split in (0, 1):
            tune("split", split)
            _check_spdp_forms(ops, ref, x, _spdp_cuda(w, tile_rows), thr, dtype)
            for shift in (2, 4):  # 4-byte aligned (nibble kernel, no balanced path); 8-byte aligned
                tune("spdp_stage", 2)
                _check_spdp_forms(ops, ref, x, _spdp_shifted(w, tile_rows, shift), thr, dtype)
                tune("spdp_stage", 0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_spdp_balanced_path_fused_inputs(ops, ref, tune, dtype):
    """The relative rule and the SwiGLU input (the decode's o and down projections) on balanced weights,
    the balanced path required in every block."""
    for k, n in ((4096, 4096), (11008, 4096), (333, 64)):
        seed = hash(("balfused", k, n)) % 1000
        for r in (32, 64, 128):
            packed = _spdp_cuda(_weight_24out(n, k, dtype, seed + r), r)
            tune("spdp_bal", 1)
            x = _x_relative((1, k), dtype, seed, 1.1)
            _poison((1, n), dtype=dtype)
            _check(ops.spdp_matvec_rel(x, packed, 1.1, backend="cuda"), ref.spdp_matvec_rel(x, packed, 1.1), dtype)
            gu = _gu_glu((1,), k, dtype, seed + 1, 0.25)
            _poison((1, n), dtype=dtype)
            _check(ops.spdp_matvec_glu(gu, packed, 0.25, backend="cuda"), ref.spdp_matvec_glu(gu, packed, 0.25), dtype)
            tune("spdp_bal", 0)
    torch.cuda.synchronize()


# the fixed balanced layout (matvec.cuh V = 5): K, N with N % 128 == 0 (whole tiles at every tile size)
FIX_SHAPES = [(4096, 11008), (11008, 4096), (301, 256), (37, 128), (5000, 384), (4096, 4096)]


def _fixed(ops, w, tile_rows):
    from sparsekit.formats import spdp

    packed = _spdp_cuda(w, tile_rows)
    assert spdp.fixed_layout(packed)
    return packed | {"fixed": True}


def _ran_fix() -> int:
    return torch.ops.sparsekit_cuda.tune("last_spdp_fix", -1)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("k,n", FIX_SHAPES)
def test_spdp_fixed_layout_matches_reference(ops, ref, tune, dtype, tile_rows, k, n):
    """A weight pruned 2:4 over output rows, declared in the fixed layout, runs the V = 5 kernel (no
    offsets read) for 1-3 tokens through spdp_matvec and _sel, split or not (K = 5000 with one slice:
    three passes of the list), and for 4 tokens through _rel and _glu (the plain op takes the
    tensor-core kernel there); spdp_bal=2 turns it off."""
    seed = hash(("fix", k, n, tile_rows)) % 1000
    packed = _fixed(ops, _weight_24out(n, k, dtype, seed + 3), tile_rows)
    for tokens in (1, 2, 3):
        x, thr = _x((tokens, k), dtype, seed + tokens, 0.5)
        for split in (0, 1, 3):
            tune("split", split)
            _poison((tokens, n), dtype=dtype)
            _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
            assert _ran_fix() == 1
            xs, idx, nnz = ops.select(x, thr, backend="cuda")
            _poison((tokens, n), dtype=dtype)
            _check(ops.spdp_matvec_sel(xs, idx, nnz, packed, backend="cuda"),
                   ref.spdp_matvec_sel(xs, idx, nnz, packed), dtype)
            assert _ran_fix() == 1
    tune("split", 0)
    for tokens in (1, 4):
        x = _x_relative((tokens, k), dtype, seed, 1.1)
        _poison((tokens, n), dtype=dtype)
        _check(ops.spdp_matvec_rel(x, packed, 1.1, backend="cuda"), ref.spdp_matvec_rel(x, packed, 1.1), dtype)
        assert _ran_fix() == 1
        gu = _gu_glu((tokens,), k, dtype, seed + 1, 0.25)
        _poison((tokens, n), dtype=dtype)
        _check(ops.spdp_matvec_glu(gu, packed, 0.25, backend="cuda"), ref.spdp_matvec_glu(gu, packed, 0.25), dtype)
        assert _ran_fix() == 1
    x, thr = _x((1, k), dtype, seed, 0.5)
    tune("spdp_bal", 2)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
    assert _ran_fix() == 0
    tune("spdp_bal", 0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_spdp_fixed_layout_declared_where_it_cannot_run(ops, ref, dtype):
    """The host takes the fixed-layout kernel only where its reads stay inside the tensors: a declared
    weight with a partial last tile, values that are not 8-byte aligned, 5 tokens through _glu, or float32
    values runs the other paths, correctly."""
    k = 520
    seed = 77
    w = _weight_24out(200, k, dtype, seed)  # 200 % 64 != 0: a partial last tile
    packed = _spdp_cuda(w, 64) | {"fixed": True}
    x, thr = _x((1, k), dtype, seed, 0.5)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
    assert _ran_fix() == 0
    whole = _fixed(ops, _weight_24out(256, k, dtype, seed + 1), 64)
    _check(ops.spdp_matvec(x, whole, thr, backend="cuda"), ref.spdp_matvec(x, whole, thr), dtype)
    assert _ran_fix() == 1
    shifted = _spdp_shifted(_weight_24out(256, k, dtype, seed + 1), 64, 2) | {"fixed": True}
    _check(ops.spdp_matvec(x, shifted, thr, backend="cuda"), ref.spdp_matvec(x, shifted, thr), dtype)
    assert _ran_fix() == 0
    gu = _gu_glu((5,), k, dtype, seed + 2, 0.25)
    _check(ops.spdp_matvec_glu(gu, whole, 0.25, backend="cuda"), ref.spdp_matvec_glu(gu, whole, 0.25), dtype)
    assert _ran_fix() == 0
    w32 = _fixed(ops, _weight_24out(256, k, torch.float32, seed + 3), 64)
    x32 = x.float()
    _check(ops.spdp_matvec(x32, w32, thr, backend="cuda"), ref.spdp_matvec(x32, w32, thr), torch.float32)
    assert _ran_fix() == 0
    torch.cuda.synchronize()


# several tokens: the tensor-core kernel (spdp_mm.cuh): (tokens, K, N, weight sparsity)
SPDP_MM_SHAPES = [(2, 200, 301, 0.5), (5, 1024, 64, 0.0), (17, 136, 129, 0.9), (33, 8, 5, 0.5), (64, 520, 200, 0.5),
                  (100, 264, 130, 0.7), (8, 4096, 11008, 0.5)]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("tokens,k,n,s1", SPDP_MM_SHAPES)
def test_spdp_mm_matches_reference(ops, ref, tune, dtype, tile_rows, tokens, k, n, s1):
    """spdp_matvec with several tokens on tensor cores: every token-chunk size (8/16/32/64, and two
    chunks at 100), K not a multiple of the column chunk, N past the last full tile, empty and full
    tiles, a NaN input (masked to 0 as in torch), thresholds t and 0, channel splits 0 (automatic),
    1 and 3, 16 and 8 rows per expansion unit; bitwise deterministic."""
    from sparsekit.formats import spdp

    tune("spdp_mm", 1)  # from 2 tokens
    seed = hash(("mm", tokens, k, n, tile_rows)) % 1000
    x, thr = _x((tokens, k), dtype, seed, 0.5)
    x[0, 0] = float("nan")
    w = _weight(n, k, dtype, seed + 3, s1)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, tile_rows).items()}
    for split, rows in ((0, 16), (1, 16), (3, 16), (0, 8), (3, 8)):
        tune("split", split)
        tune("spdp_mm_rows", rows)
        for t in (thr, 0.0):
            expect = ref.spdp_matvec(x, packed, t)
            _poison((tokens, n), dtype=dtype)
            got = ops.spdp_matvec(x, packed, t, backend="cuda")
            assert torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
            _check(got, expect, dtype)
            assert torch.equal(ops.spdp_matvec(x, packed, t, backend="cuda"), got)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("shift", (0, 1, 8, 13))
def test_spdp_mm_values_at_any_offset_and_fallbacks(ops, ref, tune, dtype, shift):
    """The tensor-core kernel copies each chunk's values from the 16-byte boundary below them, with
    a storage that ends right after the last value (zero-filled past it); values not 16-byte aligned
    (shift 1, 13), K % 8 != 0 and one token run the matvec kernels. All give the reference's result."""
    for k, tokens in ((517 - 5, 9), (517, 9), (512, 1)):
        x, thr = _x((tokens, k), dtype, 60 + shift, 0.4)
        w = _weight(301, k, dtype, 61 + shift, 0.5)
        for r in (32, 64, 128):
            packed = _spdp_shifted(w, r, shift)
            _poison((tokens, 301), dtype=dtype)
            _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
            ran = torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1)
            assert ran == (1 if shift % 8 == 0 and k % 8 == 0 and tokens > 1 else 0), (k, tokens, shift)


# the tensor-core kernel on a 2:4-out weight declared in the fixed layout: (tokens, K, N)
SPDP_MM_FIX_SHAPES = [(4, 520, 256), (9, 136, 384), (32, 4096, 512), (64, 1000, 128), (100, 264, 640)]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("tokens,k,n", SPDP_MM_FIX_SHAPES)
def test_spdp_mm_fixed_layout_equals_the_checked_path(ops, ref, tune, dtype, tile_rows, tokens, k, n):
    """From 4 tokens a weight declared in the fixed layout runs the tensor-core kernel's FX variant (chunk
    bounds without offsets, no per-unit pattern test): every token-chunk size, K not a multiple of the column
    chunk, channel splits 0/1/3, thresholds t and 0, a NaN input. It matches the reference and equals the
    undeclared weight's result (the checked path expands the same tile) bit for bit; spdp_mm_rows=8 and
    spdp_bal=2 keep the checked path."""
    seed = hash(("mmfix", tokens, k, n, tile_rows)) % 1000
    packed = _fixed(ops, _weight_24out(n, k, dtype, seed), tile_rows)
    plain = {key: v for key, v in packed.items() if key != "fixed"}
    x, thr = _x((tokens, k), dtype, seed + 1, 0.5)
    x[0, 0] = float("nan")
    for split in (0, 1, 3):
        tune("split", split)
        for t in (thr, 0.0):
            _poison((tokens, n), dtype=dtype)
            got = ops.spdp_matvec(x, packed, t, backend="cuda")
            assert _ran_fix() == 2 and torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
            _check(got, ref.spdp_matvec(x, packed, t), dtype)
            _poison((tokens, n), dtype=dtype)
            assert torch.equal(ops.spdp_matvec(x, plain, t, backend="cuda"), got)
            assert _ran_fix() == 0
    tune("split", 0)
    for knob, value in (("spdp_mm_rows", 8), ("spdp_bal", 2)):
        prev = torch.ops.sparsekit_cuda.tune(knob, value)
        _poison((tokens, n), dtype=dtype)
        _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
        assert _ran_fix() == 0 and torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
        torch.ops.sparsekit_cuda.tune(knob, prev)
    # one or two m16 strips per warp (the knob picks the warp tiling up to 32 tokens): still the FX variant, right
    for strips in (1, 2):
        prev = torch.ops.sparsekit_cuda.tune("spdp_mm_strips", strips)
        _poison((tokens, n), dtype=dtype)
        _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
        assert _ran_fix() == 2
        torch.ops.sparsekit_cuda.tune("spdp_mm_strips", prev)
    # a forced token tile (the tokens run in chunks of that many along grid z, or one chunk wider than T)
    for tn in (8, 16, 32, 64):
        prev = torch.ops.sparsekit_cuda.tune("spdp_mm_tn", tn)
        _poison((tokens, n), dtype=dtype)
        _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), ref.spdp_matvec(x, packed, thr), dtype)
        assert _ran_fix() == 2
        torch.ops.sparsekit_cuda.tune("spdp_mm_tn", prev)
    torch.cuda.synchronize()


def _mm_split_cost(nck, s):
    return -(-nck // s) + 2 * s


@pytest.mark.parametrize("tokens", (4, 32))
def test_spdp_mm_split_rule(ops, ref, tune, tokens):
    """The tensor-core kernel's automatic split is the S below the one-wave bound that minimises
    ceil(chunks / S) + 2 S (fewer slices on ties): a Llama o projection (64 column chunks of 64 at 64-row
    tiles) runs 5 slices where 5 clusters fit, not the 7-8 that fill the GPU (measured faster at 4, 16 and 32
    tokens); a forced split still wins, and the result is right either way."""
    k = n = 4096
    packed = _fixed(ops, _weight_24out(n, k, torch.float16, 7), 64)
    x, thr = _x((tokens, k), torch.float16, 8, 0.5)
    want = ref.spdp_matvec(x, packed, thr)
    tune("split", 0)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), want, torch.float16)
    assert _ran_fix() == 2
    auto = torch.ops.sparsekit_cuda.tune("last_split")
    nck = k // 64
    assert all(_mm_split_cost(nck, auto) < _mm_split_cost(nck, s) for s in range(1, auto))
    if torch.cuda.get_device_properties(0).multi_processor_count >= 100 and torch.cuda.get_device_capability()[0] >= 9:
        assert auto == 5
    tune("split", 3)
    _check(ops.spdp_matvec(x, packed, thr, backend="cuda"), want, torch.float16)
    assert torch.ops.sparsekit_cuda.tune("last_split") == 3
    tune("split", 0)


def test_spdp_mm_graph_capture_and_knob(ops, ref, tune):
    """Captured in a CUDA graph, replays match eager calls; tune("spdp_mm", 2) keeps the matvec kernel."""
    from sparsekit.formats import spdp

    w = _weight(1000, 512, torch.float16, 81, 0.5)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, 64).items()}
    static_x, thr = _x((32, 512), torch.float16, 80, 0.5)
    ops.spdp_matvec(static_x, packed, thr, backend="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.spdp_matvec(static_x, packed, thr, backend="cuda")
    for seed in (82, 83):
        static_x.copy_(_x((32, 512), torch.float16, seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ops.spdp_matvec(static_x, packed, thr, backend="cuda"))
        _check(out, ref.spdp_matvec(static_x, packed, thr), torch.float16)
    tune("spdp_mm", 2)
    _check(ops.spdp_matvec(static_x, packed, thr, backend="cuda"), ref.spdp_matvec(static_x, packed, thr),
           torch.float16)
    assert torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 0


# the tensor-core kernel's balanced expansion: (tokens, K, N); K % 8 == 0 (the kernel's condition), N % 8 == 0
SPDP_MM_BAL_SHAPES = [(5, 4096, 512), (32, 304, 104), (64, 1000, 256), (100, 520, 8), (17, 40, 200), (33, 4096, 4096)]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
@pytest.mark.parametrize("tokens,k,n", SPDP_MM_BAL_SHAPES)
def test_spdp_mm_balanced_matches_reference(ops, ref, tune, dtype, tile_rows, tokens, k, n):
    """Weights pruned 2:4 over output rows: every expansion unit of the tensor-core kernel takes the
    balanced path (spdp_bal=1 traps on a unit that would not), 16 and 8 rows per unit, channel splits
    0 and 3, thresholds t and 0; the result equals the reference and, bit for bit, the generic
    expansion's (spdp_bal=2): both build the same dense tile."""
    tune("spdp_mm", 1)
    seed = hash(("mmbal", tokens, k, n, tile_rows)) % 1000
    x, thr = _x((tokens, k), dtype, seed, 0.5)
    packed = _spdp_cuda(_weight_24out(n, k, dtype, seed + 3), tile_rows)
    for split, rows in ((0, 16), (3, 16), (0, 8), (3, 8)):
        tune("split", split)
        tune("spdp_mm_rows", rows)
        for t in (thr, 0.0):
            tune("spdp_bal", 1)
            _poison((tokens, n), dtype=dtype)
            got = ops.spdp_matvec(x, packed, t, backend="cuda")
            assert torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
            _check(got, ref.spdp_matvec(x, packed, t), dtype)
            tune("spdp_bal", 2)
            _poison((tokens, n), dtype=dtype)
            assert torch.equal(ops.spdp_matvec(x, packed, t, backend="cuda"), got)
            tune("spdp_bal", 0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("tile_rows", (32, 64, 128))
def test_spdp_mm_balanced_mixed_and_fallbacks(ops, ref, tune, dtype, tile_rows):
    """Automatic choice per unit where only some have the pattern: rows of one tile only; the first 1024
    columns only; N % 8 == 4 and N % 4 != 0 (the last tile's offsets lose the alignment or its last group
    is partial); unbalanced weights; all zero columns. Equal to the reference and, bit for bit, to the
    generic expansion."""
    tune("spdp_mm", 1)
    seed = hash(("mmbalmix", tile_rows)) % 1000
    k = 2056
    x, thr = _x((24, k), dtype, seed, 0.5)
    for w in _mixed_24out_cases(k, dtype, seed, tile_rows, 1024):
        packed = _spdp_cuda(w, tile_rows)
        for rows in (16, 8):
            tune("spdp_mm_rows", rows)
            _poison((24, w.shape[0]), dtype=dtype)
            got = ops.spdp_matvec(x, packed, thr, backend="cuda")
            assert torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
            _check(got, ref.spdp_matvec(x, packed, thr), dtype)
            tune("spdp_bal", 2)
            assert torch.equal(ops.spdp_matvec(x, packed, thr, backend="cuda"), got)
            tune("spdp_bal", 0)
    torch.cuda.synchronize()


def _x_relative(shape, dtype, seed, t):
    """Tokens of different scales (one loud, one all zero when there are 3+), with no |x| within 1%
    of t * its token's mean |x|: the kernel sums |x| in another order than torch, which can move
    a threshold by an ulp, and a value on the boundary would then flip."""
    x = torch.randn(shape, generator=_gen(seed), device="cuda")
    rows = x.view(-1, shape[-1])
    rows[0] *= 10.0
    if rows.shape[0] >= 3:
        rows[1] = 0.0
    x = x.to(dtype)
    for _ in range(20):
        xf = x.float()
        thr = t * xf.abs().mean(-1, keepdim=True)
        near = ((xf.abs() - thr).abs() <= 0.01 * thr) & (thr > 0)  # an all-zero token keeps nothing
        if not near.any():
            return x
        x = torch.where(near, torch.zeros((), dtype=dtype, device="cuda"), x)
    raise AssertionError("could not move x off the thresholds")


REL_CASES = [(dtype, lead, k, n) for dtype in DTYPES
             for lead, k, n in (((1,), 4096, 4096), ((1,), 301, 100), ((2,), 640, 300), ((3,), 1000, 257),
                                ((5,), 256, 130), ((9,), 333, 64), ((1,), 11008, 512))]


@pytest.mark.parametrize("dtype,lead,k,n", REL_CASES)
def test_relative_ops_match_reference(ops, ref, tune, dtype, lead, k, n):
    """teal/spdp_matvec_rel: every block computes its tokens' mean |x| and keeps |x| > t * mean, through
    every spdp instantiation and forced channel splits (K = 11008: several passes of the list)."""
    t = 1.1
    seed = hash(("rel", lead, k, n)) % 1000
    x = _x_relative((*lead, k), dtype, seed, t)
    _check_splits_and_spdp_variants(ops, ref, tune, "rel", x, _weight(n, k, dtype, seed + 3, 0.5), t)


def _check_splits_and_spdp_variants(ops, ref, tune, form, x, w, t):
    """ops.teal_matvec_<form> and ops.spdp_matvec_<form> against the reference, with forced channel
    splits 0, 1, 3, and for spdp every tile size and kernel variant."""
    from sparsekit.formats import spdp

    n, dtype = w.shape[0], x.dtype
    out_shape = (*x.shape[:-1], n)
    teal_op, spdp_op = f"teal_matvec_{form}", f"spdp_matvec_{form}"
    w_t = w.t().contiguous()
    expect = getattr(ref, teal_op)(x, w_t, t)
    for split in (0, 1, 3):
        tune("split", split)
        _poison(out_shape, dtype=dtype)
        _check(getattr(ops, teal_op)(x, w_t, t, backend="cuda"), expect, dtype)
        for r in (32, 64, 128):
            packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, r).items()}
            for variant in SPDP_VARIANTS.values():
                for key, value in variant.items():
                    tune(key, value)
                _poison(out_shape, dtype=dtype)
                _check(getattr(ops, spdp_op)(x, packed, t, backend="cuda"), getattr(ref, spdp_op)(x, packed, t), dtype)


@pytest.mark.parametrize("form, width", [("rel", 40), ("glu", 80)])  # glu reads [gate | up]
def test_fused_input_ops_schemas_and_fakes(form, width):
    from sparsekit.formats import spdp

    x = torch.randn(3, width, device="cuda", dtype=torch.float16)
    w = _weight(24, 40, torch.float16, 7, 0.5)
    p = spdp.encode(w, 32)
    sk = torch.ops.sparsekit
    teal_op, spdp_op = getattr(sk, f"teal_matvec_{form}"), getattr(sk, f"spdp_matvec_{form}")
    for op, args in ((teal_op.default, (x, w.t().contiguous(), 0.5)),
                     (spdp_op.default, (x, p["values"].cuda(), p["bitmap"].cuda(), p["offsets"].cuda(), 24, 32, 0.5))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def _gu_glu(lead, k, dtype, seed, t):
    """Stacked gate/up outputs [*lead, 2k] whose SwiGLU product h = silu(gate) * up has no |h|
    within 1% of t (a gate set to 0 gives h = 0): the kernel's silu may differ from torch's by an
    ulp, and a product on the threshold would then flip."""
    gu = (2.0 * torch.randn((*lead, 2 * k), generator=_gen(seed), device="cuda")).to(dtype)
    for _ in range(20):
        from sparsekit.kernels.reference import silu_mul

        h = silu_mul(gu).float()
        near = (h.abs() - t).abs() <= 0.01 * t
        if not near.any():
            return gu
        gate = torch.where(near, torch.zeros((), dtype=dtype, device="cuda"), gu[..., :k])
        gu = torch.cat([gate, gu[..., k:]], dim=-1)
    raise AssertionError("could not move the product off the threshold")


@pytest.mark.parametrize("dtype,lead,k,n", REL_CASES)  # the same shapes as the relative ops
def test_glu_ops_match_reference(ops, ref, tune, dtype, lead, k, n):
    """teal/spdp_matvec_glu: the kernel reads gate and up, forms silu(gate) * up rounded as torch rounds
    it, thresholds that, through every spdp instantiation and forced channel splits."""
    t = 0.25
    seed = hash(("glu", lead, k, n)) % 1000
    gu = _gu_glu(lead, k, dtype, seed, t)
    _check_splits_and_spdp_variants(ops, ref, tune, "glu", gu, _weight(n, k, dtype, seed + 5, 0.5), t)


def test_glu_product_is_rounded_like_torch(ops, ref):
    """With one active channel and an identity weight the output is the SwiGLU product itself: bit
    for bit torch's F.silu(gate) * up in fp16/bf16 (rounded twice, as an MLP computes it)."""
    from sparsekit.formats import spdp

    k = 4096
    for dtype in (torch.float16, torch.bfloat16):
        gu = (3.0 * torch.randn((1, 2 * k), generator=_gen(3), device="cuda")).to(dtype)
        h = ref.silu_mul(gu)
        eye = torch.eye(k, device="cuda", dtype=dtype)
        assert torch.equal(ops.teal_matvec_glu(gu, eye, 0.0, backend="cuda"), h)
        packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(eye, 64).items()}
        assert torch.equal(ops.spdp_matvec_glu(gu, packed, 0.0, backend="cuda"), h)


BAD_CALLS = {
    "teal_matvec": "sk.teal_matvec(h(2, 5), h(4, 3), 0.1)",
    "teal_matvec_glu": "sk.teal_matvec_glu(h(2, 79), h(40, 3), 0.1)",
    "spdp_matvec_glu": "sk.spdp_matvec_glu(h(2, 79), h(8), i(2 * 40), i(2 * 40 + 1), 3, 32, 0.1)",
    "tune": "torch.ops.sparsekit_cuda.tune('split', 99)",
}


def test_mismatched_cuda_inputs_stop_in_python(ops):
    """The op wrappers reject mismatched CUDA inputs with a ValueError before the kernel's own checks."""
    from sparsekit.formats import spdp

    x = torch.randn(2, 40, device="cuda", dtype=torch.float16)
    w = _weight(24, 40, torch.float16, 3, 0.5)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, 32).items()}
    for call in (lambda: ops.teal_matvec(x[:, :39], w.t().contiguous(), 0.1, backend="cuda"),
                 lambda: ops.teal_matvec(x, w.t().contiguous().float(), 0.1, backend="cuda"),
                 lambda: ops.teal_matvec_glu(x, w.t().contiguous(), 0.1, backend="cuda"),
                 lambda: ops.spdp_matvec(x.float(), packed, 0.1, backend="cuda"),
                 lambda: ops.spdp_matvec_glu(x[:, :39], packed, 0.1, backend="cuda")):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_a_python_error(name):
    """A failed check inside a CUDA op reaches Python as a RuntimeError with its sentence (run in a
    child process, so that a crash fails this test instead of ending the session). On the lent GPU
    image, a build whose statically linked libstdc++ was exported crashed here (SIGSEGV; NOTES,
    seventh session); setup.py's -Wl,--exclude-libs,ALL fixed it (eighth session, H100: passed)."""
    import subprocess
    import sys

    code = ("import torch, sparsekit.ops\n"
            "sk = torch.ops.sparsekit\n"
            "h = lambda *s: torch.randn(*s, device='cuda', dtype=torch.float16)\n"
            "i = lambda n: torch.zeros(n, device='cuda', dtype=torch.int32)\n"
            "try:\n"
            f"    {BAD_CALLS[name]}\n"
            "    print('NO ERROR')\n"
            "except RuntimeError as exc:\n"
            "    print('RAISED', str(exc).splitlines()[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("RAISED"), r.stdout


# ----------------------------------------------------------------------------------------- spinfer
SPINFER_CASES = [
    (dtype, n, k, tokens, sparsity)
    for dtype in DTYPES
    for n, k in ((64, 64), (1024, 2048), (130, 200), (256, 520))
    for tokens in (1, 8, 13, 32, 64, 100)
    for sparsity in (0.0, 0.5, 0.7)
] + [(dtype, 4096, 4096, tokens, 0.5) for dtype in (torch.float16, torch.bfloat16) for tokens in (8, 32)]


@pytest.mark.parametrize("dtype,n,k,tokens,sparsity", SPINFER_CASES)
def test_spinfer_matches_reference(ops, ref, dtype, n, k, tokens, sparsity):
    from sparsekit.formats import spinfer

    seed = hash((n, k, tokens, sparsity)) % 1000
    x, _ = _x((tokens, k), dtype, seed)
    w = _weight(n, k, dtype, seed + 5, sparsity)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spinfer.encode(w).items()}
    _poison((tokens, n), dtype=dtype)
    out = ops.spinfer_matmul(x, packed, backend="cuda")
    _check(out, ref.spinfer_matmul(x, packed), dtype)


def test_spinfer_leading_dims(ops, ref):
    from sparsekit.formats import spinfer

    x, _ = _x((2, 3, 192), torch.float16, seed=11)
    w = _weight(96, 192, torch.float16, seed=12, sparsity=0.6)
    packed = {key: (v.cuda() if key != "shape" else v) for key, v in spinfer.encode(w).items()}
    _check(ops.spinfer_matmul(x, packed, backend="cuda"), ref.spinfer_matmul(x, packed), torch.float16)


# ---------------------------------------------------------------------------------------- rowdelta
ROWDELTA_CASES = [
    (dtype, n, k, tokens, sparsity)
    for dtype in DTYPES
    for n, k in ((1, 8), (64, 64), (130, 200), (257, 1000), (1000, 4096))
    for tokens in (1, 2)
    for sparsity in (0.0, 0.6, 0.95)
] + [(dtype, n, k, 1, 0.6) for dtype in (torch.float16, torch.bfloat16) for n, k in ((4096, 11008), (11008, 4096))]


@pytest.mark.parametrize("dtype,n,k,tokens,sparsity", ROWDELTA_CASES)
def test_rowdelta_matches_reference(ops, ref, dtype, n, k, tokens, sparsity):
    from sparsekit.formats import rowdelta

    seed = hash((n, k, tokens, sparsity)) % 1000
    x, _ = _x((tokens, k), dtype, seed)
    w = _weight(n, k, dtype, seed + 5, sparsity)
    packed = rowdelta.encode(w)  # encoded on the GPU
    _poison((tokens, n), dtype=dtype)
    out = ops.rowdelta_matvec(x, packed, backend="cuda")
    _check(out, ref.rowdelta_matvec(x, packed), dtype)


def test_rowdelta_long_gaps_and_empty_rows(ops, ref):
    """Rows with gaps far beyond 15 columns (filler entries), empty rows, a row of one column."""
    from sparsekit.formats import rowdelta

    w = torch.zeros(70, 3000, dtype=torch.float16, device="cuda")
    w[0, 2999] = 1.0
    w[1, ::700] = 0.5
    w[5, :] = 0.01
    w[69, 0] = -2.0
    x, _ = _x((1, 3000), torch.float16, seed=3)
    packed = rowdelta.encode(w)
    out = ops.rowdelta_matvec(x, packed, backend="cuda")
    _check(out, ref.rowdelta_matvec(x, packed), torch.float16)
    assert torch.equal(out[0, 10:60], torch.zeros_like(out[0, 10:60]))


def test_rowdelta_misaligned_values_and_leading_dims(ops, ref):
    from sparsekit.formats import rowdelta

    w = _weight(96, 192, torch.bfloat16, seed=12, sparsity=0.6)
    packed = rowdelta.encode(w)
    base = torch.zeros(packed["values"].numel() + 1, dtype=torch.bfloat16, device="cuda")
    base[1:] = packed["values"]
    shifted = dict(packed, values=base[1:])  # 2 bytes past a 16-byte boundary
    x, _ = _x((2, 1, 192), torch.bfloat16, seed=13)
    _check(ops.rowdelta_matvec(x, shifted, backend="cuda"), ref.rowdelta_matvec(x, packed), torch.bfloat16)


def test_rowdelta_rejects_mixed_dtypes(ops):
    from sparsekit.formats import rowdelta

    packed = rowdelta.encode(_weight(16, 64, torch.float16, seed=1, sparsity=0.5))
    with pytest.raises(ValueError, match="dtype|float"):
        ops.rowdelta_matvec(torch.randn(1, 64, device="cuda"), packed, backend="cuda")
    with pytest.raises(RuntimeError, match="values must have x's dtype"):
        torch.ops.sparsekit.rowdelta_matvec(torch.randn(1, 64, device="cuda"), packed["values"], packed["deltas"],
                                            packed["row_offsets"], 16, 64)


# ---------------------------------------------------------------- determinism, splits, CUDA graphs
def _all_ops(ops, dtype=torch.bfloat16, tokens=1):
    from sparsekit.formats import rowdelta, spdp, spinfer

    k, n = 1536, 2304
    x, thr = _x((tokens, k), dtype, seed=tokens, sparsity=0.5)
    w = _weight(n, k, dtype, seed=21, sparsity=0.5)
    w_t = w.t().contiguous()
    sp = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, 64).items()}
    si = {key: (v.cuda() if key != "shape" else v) for key, v in spinfer.encode(w).items()}
    rd = rowdelta.encode(w)

    def run(xin):
        xs, idx, nnz = ops.select(xin, thr, backend="cuda")
        return [
            ops.teal_matvec(xin, w_t, thr, backend="cuda"),
            ops.teal_matvec_sel(xs, idx, nnz, w_t, backend="cuda"),
            ops.spdp_matvec(xin, sp, thr, backend="cuda"),
            ops.spdp_matvec_sel(xs, idx, nnz, sp, backend="cuda"),
            ops.spinfer_matmul(xin, si, backend="cuda"),
            ops.rowdelta_matvec(xin, rd, backend="cuda"),
        ]

    return x, thr, run


@pytest.mark.parametrize("tokens", [1, 6])
def test_results_are_deterministic(ops, tokens):
    x, _, run = _all_ops(ops, tokens=tokens)
    first = run(x)
    for _ in range(3):
        for a, b in zip(first, run(x)):
            assert torch.equal(a, b)


def test_split_does_not_change_the_function(ops, tune):
    x, _, run = _all_ops(ops, dtype=torch.float16)
    tune("split", 1)  # the pre-Hopper path: one block per output tile, no cluster
    one = run(x)
    tune("split", 0)
    auto = run(x)
    assert torch.ops.sparsekit_cuda.tune("last_split") > 1  # the clustered path really ran
    for a, b in zip(one, auto):
        _check(b, a, torch.float16)


def test_cuda_graph_capture_and_replay(ops, ref):
    x, thr, run = _all_ops(ops, dtype=torch.float16)
    static_x = x.clone()
    run(static_x)  # warm up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run(static_x)
    for seed in (5, 6):
        static_x.copy_(_x(x.shape, x.dtype, seed=seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        eager = run(static_x)
        for a, b in zip(outs, eager):
            assert torch.equal(a, b)


@pytest.mark.parametrize("tokens", [1, 6])
def test_sanitizer_smoke(ops, ref, tune, tokens):
    """Every kernel once on small shapes (benchmarks/gpu_cuda.sh runs this under compute-sanitizer)."""
    from sparsekit.formats import spdp, spinfer

    dtype = torch.float16
    x, thr = _x((tokens, 200), dtype, seed=tokens, sparsity=0.5)
    w = _weight(136, 200, dtype, seed=2, sparsity=0.5)
    xs, idx, nnz = ops.select(x, thr, backend="cuda")
    for teal1, threads, lpr in ((0, 0, 0), (1, 0, 0), (1, 256, 32)):  # matvec.cuh, then teal1 (T = 1)
        tune("teal1", teal1)
        tune("teal1_threads", threads)
        tune("teal1_lpr", lpr)
        _check(ops.teal_matvec(x, w.t().contiguous(), thr, backend="cuda"), ref.teal_matvec(x, w.t().contiguous(), thr),
               dtype)
        _check(ops.teal_matvec_sel(xs, idx, nnz, w.t().contiguous(), backend="cuda"),
               ref.teal_matvec_sel(xs, idx, nnz, w.t().contiguous()), dtype)
    for r in (32, 64, 128):
        sp = {key: (v.cuda() if key != "shape" else v) for key, v in spdp.encode(w, r).items()}
        for stage in (1, 2):  # one token: the staged kernel, then the nibble one
            tune("spdp_stage", stage)
            _check(ops.spdp_matvec(x, sp, thr, backend="cuda"), ref.spdp_matvec(x, sp, thr), dtype)
            _check(ops.spdp_matvec_sel(xs, idx, nnz, sp, backend="cuda"), ref.spdp_matvec_sel(xs, idx, nnz, sp), dtype)
        tune("spdp_stage", 0)
        # the balanced paths (2:4 over output rows), required everywhere: at one token in the staged and
        # the nibble kernel, at six in the tensor-core kernel's expansion (16 and 8 rows per unit)
        sb = _spdp_cuda(_weight_24out(136, 200, dtype, seed=3), r)
        knob, values, default = ("spdp_stage", (1, 2), 0) if tokens == 1 else ("spdp_mm_rows", (16, 8), 16)
        for value in values:
            tune(knob, value)
            tune("spdp_bal", 1)
            _check(ops.spdp_matvec(x, sb, thr, backend="cuda"), ref.spdp_matvec(x, sb, thr), dtype)
            tune("spdp_bal", 0)
        tune(knob, default)
        # the fixed-layout kernel (whole tiles): one token, or three (its 4-token instantiation)
        sf = _fixed(ops, _weight_24out(128, 200, dtype, seed=4), r)
        xf = x[:1] if tokens == 1 else x[:3]
        _check(ops.spdp_matvec(xf, sf, thr, backend="cuda"), ref.spdp_matvec(xf, sf, thr), dtype)
        assert _ran_fix() == 1
        xfs, fidx, fnnz = ops.select(xf, thr, backend="cuda")
        _check(ops.spdp_matvec_sel(xfs, fidx, fnnz, sf, backend="cuda"), ref.spdp_matvec_sel(xfs, fidx, fnnz, sf), dtype)
        assert _ran_fix() == 1
        if tokens > 1:  # six tokens: the tensor-core kernel's fixed-layout variant
            _check(ops.spdp_matvec(x, sf, thr, backend="cuda"), ref.spdp_matvec(x, sf, thr), dtype)
            assert _ran_fix() == 2
            # 32 tokens (its four-stage ring), one slice: the block walks 8-32 chunks, so the ring wraps
            sw = _fixed(ops, _weight_24out(128, 1000, dtype, seed=5), r)
            xw, tw = _x((32, 1000), dtype, seed=6, sparsity=0.5)
            tune("split", 1)
            _check(ops.spdp_matvec(xw, sw, tw, backend="cuda"), ref.spdp_matvec(xw, sw, tw), dtype)
            assert _ran_fix() == 2 and torch.ops.sparsekit_cuda.tune("last_split") == 1
            tune("split", 0)
        for mm in (0, 2):  # decode: the tensor-core kernel's pipeline (K % 8 == 0), then the one-pass kernel
            tune("spdp_mm", mm)
            assert torch.equal(ops.spdp_decode(sp, backend="cuda"), ref.spdp_decode(sp))
            assert torch.equal(ops.spdp_decode(sb, backend="cuda"), ref.spdp_decode(sb))
        tune("spdp_mm", 0)
        xr = _x_relative(x.shape, dtype, 40 + tokens, 1.1)
        _check(ops.spdp_matvec_rel(xr, sp, 1.1, backend="cuda"), ref.spdp_matvec_rel(xr, sp, 1.1), dtype)
    _check(ops.teal_matvec_rel(xr, w.t().contiguous(), 1.1, backend="cuda"),
           ref.teal_matvec_rel(xr, w.t().contiguous(), 1.1), dtype)
    gu = _gu_glu((tokens,), 200, dtype, 50 + tokens, 0.25)
    _check(ops.teal_matvec_glu(gu, w.t().contiguous(), 0.25, backend="cuda"),
           ref.teal_matvec_glu(gu, w.t().contiguous(), 0.25), dtype)
    _check(ops.spdp_matvec_glu(gu, sp, 0.25, backend="cuda"), ref.spdp_matvec_glu(gu, sp, 0.25), dtype)
    si = {key: (v.cuda() if key != "shape" else v) for key, v in spinfer.encode(w).items()}
    _check(ops.spinfer_matmul(x, si, backend="cuda"), ref.spinfer_matmul(x, si), dtype)


@pytest.mark.parametrize("tokens", [1, 6])
@pytest.mark.parametrize(
    "knobs",
    [{"pipe": 1}, {"pipe": 1, "pdl": 1}, {"pdl": 1}, {"spinfer_warps": 8}, {"teal_lpr": 32, "split": 2}, {"teal_lpr": 8},
     {"teal1": 1}, {"teal1": 1, "pdl": 1}, {"teal1": 1, "teal1_threads": 512, "teal1_lpr": 8},
     {"spdp_deep": 1}, {"spdp_deep": 1, "split": 2}, {"spdp_deep": 2},
     {"spdp_stage": 2}, {"spdp_stage": 1, "split": 3}, {"spdp_stage": 2, "spdp_nib": 2},
     {"spdp_stage": 2, "spdp_nib": 2, "spdp_deep": 1}, {"spdp_stage": 2, "spdp_nib": 1, "split": 3},
     {"l2pf": 64}, {"l2pf": 2048, "split": 3}, {"l2pf": 32, "pdl": 1},
     {"pdl": 1, "l2pf": 64, "split": 1}],
)
def test_variants_compute_the_same_function(ops, tune, knobs, tokens):
    """Every code path behind the tuning knobs agrees with the default one (checked against the reference above)."""
    x, _, run = _all_ops(ops, dtype=torch.float16, tokens=tokens)
    default = run(x)
    for key, value in knobs.items():
        tune(key, value)
    for a, b in zip(default, run(x)):
        _check(b, a, torch.float16)


@pytest.mark.parametrize("knobs", [{"pdl": 1}, {"pdl": 1, "l2pf": 64}])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pdl_chain_reads_each_previous_output(ops, tune, knobs, dtype):
    """With programmatic dependent launch, each kernel of a chain of dependent ops (every one reads
    the output of the one before, as a decoder layer does) starts before the previous one ends, and
    must still see all of its output: bit-equal to the chain without PDL, eager and graph-replayed."""
    from sparsekit.formats import spdp

    g = _gen(97 + len(knobs))
    k, n = 1000, 2 * 1000
    scale = k ** -0.5  # keeps every stage's values near 1, so nothing overflows in fp16
    x = torch.randn(1, k, device="cuda", generator=g).to(dtype)
    w1 = (torch.randn(k, n, device="cuda", generator=g) * scale).to(dtype)  # teal: [K, N]; N = 2K for the glu op
    w2 = (torch.randn(k, k, device="cuda", generator=g) * scale).to(dtype)
    w3 = torch.randn(k, k, device="cuda", generator=g) * scale * (torch.rand(k, k, device="cuda", generator=g) > 0.5)
    packed = spdp.encode(w3.to(dtype))  # encoded on the GPU; its "shape" stays on the CPU

    def chain(inp):
        gu = ops.teal_matvec(inp, w1, 0.3, backend="cuda")
        h = ops.teal_matvec_glu(gu, w2, 0.05, backend="cuda")
        h = ops.teal_matvec_rel(h, w2, 0.5, backend="cuda")
        return ops.spdp_matvec(h, packed, 0.01, backend="cuda")

    expect = chain(x)
    assert torch.isfinite(expect).all() and expect.abs().max() > 0
    for key, value in knobs.items():
        tune(key, value)
    for _ in range(3):
        assert torch.equal(chain(x), expect)
    static_x = x.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(static_x)
    for seed in (3, 4):
        static_x.copy_(torch.randn(x.shape, device="cuda", generator=_gen(seed)).to(dtype))
        graph.replay()
        torch.cuda.synchronize()
        tune("pdl", 0)
        assert torch.equal(out, chain(static_x))
        tune("pdl", 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(200, 333), (4096, 4096), (22016, 4096)])
def test_trace_probe_records_every_block_and_changes_no_bit(ops, tune, dtype, n, k):
    """sparsekit_cuda.trace(buf) runs the PROBE twin of the teal kernel: the same outputs bit for bit,
    and one ordered timeline per block whose active-channel counts add up to the channels over the
    threshold (each block's slice fits one pass at these sizes)."""
    g = _gen(n * 7 + k)
    x = torch.randn(1, k, device="cuda", generator=g).to(dtype)
    w_t = torch.randn(k, n, device="cuda", generator=g).to(dtype)
    tune("split", 2)  # two slices of at most 2048 channels: one list pass per block
    plain = ops.teal_matvec(x, w_t, 0.6, backend="cuda")
    buf = torch.zeros(4096, 8, dtype=torch.int64, device="cuda")
    torch.ops.sparsekit_cuda.trace(buf)
    try:
        traced = ops.teal_matvec(x, w_t, 0.6, backend="cuda")
        torch.cuda.synchronize()
    finally:
        torch.ops.sparsekit_cuda.trace(None)
    assert torch.equal(traced, plain)
    split = torch.ops.sparsekit_cuda.tune("last_split")
    assert split == 2
    recs = buf.cpu()
    written = int((recs[:, 0] != 0).sum())
    assert written == int((recs[:, 6] != 0).sum()) and written >= split
    assert written % split == 0 and torch.all(recs[written:] == 0)
    r = recs[:written]
    assert torch.all(r[:, 6] >= r[:, 0])  # global ns: end after start
    for a, b in ((1, 2), (2, 3), (3, 4), (4, 5)):  # SM clock: entry <= list <= stream <= reduce <= end
        assert torch.all(r[:, b] >= r[:, a])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert torch.all((r[:, 7] & 0xFFFFFFFF) < sms)
    rows = (r[:, 7] >> 32).reshape(split, written // split)  # blockIdx.y = slice, x = tile
    assert torch.all(rows == rows[:, :1])  # every tile of a slice sees the same channels
    assert int(rows[:, 0].sum()) == int((x.abs() > 0.6).sum())
    ops.teal_matvec(x, w_t, 0.6, backend="cuda")  # cleared: the default kernel again, nothing written
    torch.cuda.synchronize()
    assert written == int((buf[:, 0] != 0).sum())
    with pytest.raises(RuntimeError, match="block records but the launch has"):
        torch.ops.sparsekit_cuda.trace(buf[:1])
        try:
            ops.teal_matvec(x, w_t, 0.6, backend="cuda")
        finally:
            torch.ops.sparsekit_cuda.trace(None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(200, 333), (4096, 1000), (12288, 4096)])
def test_l2_prefetch_changes_no_bit(ops, tune, dtype, n, k):
    """Prefetching weight rows into L2 (tune("l2pf")) is a hint: every teal op gives bit-identical
    outputs with and without it, including the last, partial tile of a row."""
    g = _gen(n + k)
    x = torch.randn(1, k, device="cuda", generator=g).to(dtype)
    gu = torch.randn(1, 2 * k, device="cuda", generator=g).to(dtype)
    w_t = torch.randn(k, n, device="cuda", generator=g).to(dtype)
    calls = (lambda: ops.teal_matvec(x, w_t, 0.5, backend="cuda"),
             lambda: ops.teal_matvec_rel(x, w_t, 0.7, backend="cuda"),
             lambda: ops.teal_matvec_glu(gu, w_t, 0.1, backend="cuda"))
    before = [c() for c in calls]
    tune("l2pf", 256)
    for a, c in zip(before, calls):
        assert torch.equal(a, c())
