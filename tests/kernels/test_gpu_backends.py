"""GPU backends (cuda extension and Triton) through sparsekit.ops against the reference, and
CUDA-graph capture (no host sync inside any op). Run on the GPU machine."""
from __future__ import annotations

import pytest
import torch

from sparsekit import _ext, ops
from sparsekit.formats import spdp, spinfer
from sparsekit.kernels import reference as ref

from ._util import DTYPES, TOL, rel_err, threshold_for, weight

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in ops.available_backends("cuda") if b != "reference"]


def _packs(w):
    p = {k: v.cuda() for k, v in spdp.encode(w.cpu(), 32).items()}
    p["shape"] = p["shape"].cpu()
    s = {k: v.cuda() for k, v in spinfer.encode(w.cpu()).items()}
    s["shape"] = s["shape"].cpu()
    return p, s


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_backend_matches_reference(backend, dtype):
    g = torch.Generator().manual_seed(3)
    for k, n in [(37, 29), (130, 67), (4096, 4096), (1000, 1500)]:
        w = weight(n, k, dtype, 0.5, g, "cuda")
        w_t = w.t().contiguous()
        p, s = _packs(w)
        for t in (1, 3, 17, 64):
            x = torch.randn(t, k, generator=g).to(dtype).cuda()
            for s2 in (0.0, 0.5, 1.0):
                thr = threshold_for(x, s2)
                case = f"{backend} {dtype} K={k} N={n} T={t} s2={s2}"
                sel = ref.select(x, thr)
                got = ops.select(x, thr, backend=backend)
                m = int(sel[2][0])
                assert torch.equal(got[0], sel[0]) and torch.equal(got[2], sel[2]), case
                assert torch.equal(got[1][:m], sel[1][:m]), case
                r = ref.teal_matvec(x, w_t, thr)
                assert rel_err(ops.teal_matvec(x, w_t, thr, backend=backend), r) <= TOL[dtype], case
                assert rel_err(ops.teal_matvec_sel(*sel, w_t, backend=backend), r) <= TOL[dtype], case
                assert rel_err(ops.spdp_matvec(x, p, thr, backend=backend), r) <= TOL[dtype], case
                assert rel_err(ops.spdp_matvec_sel(*sel, p, backend=backend), r) <= TOL[dtype], case
            assert rel_err(ops.spinfer_matmul(x, s, backend=backend), ref.spinfer_matmul(x, s)) <= TOL[dtype], case


@pytest.mark.parametrize("backend", _backends())
def test_ops_capture_in_cuda_graph(backend):
    dtype = torch.float16
    k, n = 512, 384
    w = weight(n, k, dtype, 0.5, None, "cuda")
    w_t = w.t().contiguous()
    p, s = _packs(w)
    x = torch.randn(1, k, dtype=dtype, device="cuda")
    thr = threshold_for(x, 0.5)

    def step():
        xs, idx, nnz = ops.select(x, thr, backend=backend)
        return (ops.teal_matvec(x, w_t, thr, backend=backend), ops.teal_matvec_sel(xs, idx, nnz, w_t, backend=backend),
                ops.spdp_matvec(x, p, thr, backend=backend), ops.spdp_matvec_sel(xs, idx, nnz, p, backend=backend),
                ops.spinfer_matmul(x, s, backend=backend))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    x.copy_(torch.randn(1, k, dtype=dtype, device="cuda"))  # new input, same threshold
    graph.replay()
    torch.cuda.synchronize()
    r = ref.teal_matvec(x, w_t, thr)
    for y in outs[:4]:
        assert rel_err(y, r) <= TOL[dtype]
    assert rel_err(outs[4], ref.spinfer_matmul(x, s)) <= TOL[dtype]


def test_extension_has_cuda_kernels():
    assert _ext.has_cuda(), "sparsekit._C was built without the CUDA kernels on a GPU machine"
