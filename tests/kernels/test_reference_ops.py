"""The reference ops agree with each other and with float64 arithmetic."""
from __future__ import annotations

import pytest
import torch

from sparsekit.formats import spdp, spinfer
from sparsekit.kernels import reference as ref

from ._util import DTYPES, TOL, rel_err, threshold_for, weight


def test_mask_is_strict():
    x = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.25, 2.0]])
    assert ref.mask_activations(x, 0.5).tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.0, 2.0]]


def test_select_union_over_tokens():
    x = torch.tensor([[0.0, 3.0, 0.1, 0.0], [0.0, 0.0, 0.0, -4.0], [0.2, 0.0, 0.0, 0.0]])
    xs, idx, nnz = ref.select(x, 0.15)
    assert int(nnz[0]) == 3 and idx[:3].tolist() == [0, 1, 3]
    assert idx.dtype == torch.int32 and nnz.dtype == torch.int32 and idx.shape == (4,)
    assert torch.equal(xs, ref.mask_activations(x, 0.15))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_agree_with_float64(dtype):
    g = torch.Generator().manual_seed(1)
    for k, n, t in [(37, 29, 1), (70, 130, 3), (64, 64, 17)]:
        x = torch.randn(t, k, generator=g).to(dtype)
        thr = threshold_for(x, 0.5)
        w = weight(n, k, dtype, 0.5, g)
        truth = (ref.mask_activations(x, thr).double() @ w.double().T).to(dtype)
        w_t = w.t().contiguous()
        sel = ref.select(x, thr)
        assert rel_err(ref.teal_matvec(x, w_t, thr), truth) <= TOL[dtype]
        assert rel_err(ref.teal_matvec_sel(*sel, w_t), truth) <= TOL[dtype]
        for r in (32, 64, 128):
            p = spdp.encode(w, r)
            assert rel_err(ref.spdp_matvec(x, p, thr), truth) <= TOL[dtype]
            assert rel_err(ref.spdp_matvec_sel(*sel, p), truth) <= TOL[dtype]
        dense_truth = (x.double() @ w.double().T).to(dtype)
        assert rel_err(ref.spinfer_matmul(x, spinfer.encode(w)), dense_truth) <= TOL[dtype]


def test_relative_ops_threshold_each_token_by_its_mean():
    """teal/spdp_matvec_rel keep x where |x| > t * the token's mean |x|: the same t keeps different
    channels in a loud and a quiet token, unlike the absolute ops."""
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.125, 0.25, 0.375, 0.75]])  # means 3.0 and 0.375
    w = torch.eye(4)
    y = ref.teal_matvec_rel(x, w.t().contiguous(), 0.9)
    assert y.tolist() == [[0.0, 0.0, 3.0, 6.0], [0.0, 0.0, 0.375, 0.75]]
    assert torch.equal(ref.spdp_matvec_rel(x, spdp.encode(w, 32), 0.9), y)
    assert ref.teal_matvec(x, w.t().contiguous(), 0.9)[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_glu_ops_read_the_swiglu_product():
    """teal/spdp_matvec_glu take [gate | up] and multiply silu(gate) * up, computed in gu's dtype as a
    Llama MLP computes it."""
    gate = torch.tensor([[0.0, 1.0, -2.0, 3.0]])
    up = torch.tensor([[5.0, 2.0, 1.0, -1.0]])
    gu = torch.cat([gate, up], dim=-1)
    h = torch.nn.functional.silu(gate) * up
    assert torch.equal(ref.silu_mul(gu), h)
    w = torch.eye(4)
    # |h| = 0, 1.462, 0.238, 2.857: threshold 0.5 keeps channels 1 and 3
    y = ref.teal_matvec_glu(gu, w.t().contiguous(), 0.5)
    assert torch.equal(y, torch.where(h.abs() > 0.5, h, torch.zeros(())))
    assert torch.equal(ref.spdp_matvec_glu(gu, spdp.encode(w, 32), 0.5), y)
    half = gu.half()
    assert torch.equal(ref.silu_mul(half), torch.nn.functional.silu(half[:, :4]) * half[:, 4:])
    with pytest.raises(ValueError, match="odd width"):
        ref.silu_mul(torch.randn(2, 7))


def test_leading_dims_are_tokens():
    x = torch.randn(2, 3, 40)
    w_t = torch.randn(40, 9)
    y = ref.teal_matvec(x, w_t, 0.3)
    assert y.shape == (2, 3, 9)
    assert torch.allclose(y.reshape(6, 9), ref.teal_matvec(x.reshape(6, 40), w_t, 0.3))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        ref.teal_matvec(torch.randn(1, 5), torch.randn(6, 3), 0.0)
