"""Weight formats: exact round trips on random and edge-case weights, and the documented layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsekit.formats import bitmask, semi24, teal
from sparsekit.runtime.linear import FORMATS, format_module

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (7, 13), (64, 64), (33, 129), (130, 70)]


def _random_sparse(n, k, sparsity, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    return w.masked_fill(torch.rand(n, k, generator=g) < sparsity, 0)


def _two_four(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k // 4, 4, generator=g)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1)[..., :2]
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, keep, True)
    w = (w * mask).reshape(n, k).to(dtype)
    w[0, :4] = 0  # an empty group
    if n > 1:
        w[1, :4] = torch.tensor([0, 0, 1.5, 0], dtype=dtype)  # a group with one non-zero
    return w


def _encode(fmt, w):
    return format_module(fmt).encode(w)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "2:4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "zeros", "dense"])
def test_round_trip_exact(fmt, dtype, shape, kind):
    n, k = shape
    w = {"random": _random_sparse(n, k, 0.6, dtype), "zeros": torch.zeros(n, k, dtype=dtype),
         "dense": (torch.rand(n, k) + 0.5).to(dtype)}[kind]
    packed = _encode(fmt, w)
    back = format_module(fmt).decode(packed)
    assert back.dtype == w.dtype and back.shape == w.shape
    assert torch.equal(_bits(back), _bits(w))  # bit for bit


def _bits(t):
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (5, 12), (64, 64), (33, 132)])
def test_two_four_round_trip_exact(dtype, shape):
    w = _two_four(*shape, dtype)
    packed = semi24.encode(w)
    n, k = shape
    assert packed["values"].shape == (n, k // 2) and packed["values"].dtype == dtype
    assert packed["indices"].shape == (n, -(-k // 8)) and packed["indices"].dtype == torch.uint8
    assert torch.equal(semi24.decode(packed), w)
    z = torch.zeros(shape, dtype=dtype)
    assert torch.equal(semi24.decode(semi24.encode(z)), z)


def test_two_four_layout_by_hand():
    # row 0: group 0 keeps positions 1 and 3, group 1 keeps 0 and 2 -> byte (1 | 3<<2) | (0 | 2<<2) << 4
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]])
    p = semi24.encode(w)
    assert p["values"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert p["indices"].tolist() == [[(1 | 3 << 2) | ((0 | 2 << 2) << 4)]]
    assert p["shape"].tolist() == [1, 8]


def test_two_four_refuses_with_first_offending_position():
    w = _two_four(6, 16, torch.float32)
    w[3, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    w[5, 0:4] = 1.0
    with pytest.raises(semi24.NotTwoFour, match=r"row 3, inputs 8-11 hold 3 non-zeros"):
        semi24.encode(w)
    with pytest.raises(semi24.NotTwoFour, match="divisible by 4"):
        semi24.check(torch.zeros(2, 6))


def _ct_reference(w):
    """compressed-tensors' BitmaskCompressor when a version with the sparse compressors imports;
    otherwise the documented layout encoded independently with numpy."""
    try:
        from compressed_tensors.compressors.sparse_compressors.sparse_bitmask import BitmaskTensor
    except ImportError:
        mask = (w != 0).numpy()
        counts = mask.sum(-1)
        return {
            "shape": torch.tensor(list(w.shape)),
            "compressed": torch.from_numpy(w.float().numpy()[mask]).to(w.dtype),
            "bitmask": torch.from_numpy(np.packbits(mask, axis=-1, bitorder="little")),
            "row_offsets": torch.from_numpy(np.cumsum(counts) - counts),
        }, "numpy"
    d = BitmaskTensor.from_dense(w).dict(name_prefix="w", device="cpu")
    return {k.split(".", 1)[1]: v for k, v in d.items()}, "compressed-tensors"


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 64), (33, 130)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitmask_matches_compressed_tensors_layout(shape, dtype):
    w = _random_sparse(*shape, 0.5, dtype, seed=3)
    ref, _ = _ct_reference(w)
    ours = bitmask.encode(w)
    assert set(ours) == set(ref) == {"shape", "compressed", "bitmask", "row_offsets"}
    for key in ref:
        assert ours[key].dtype == ref[key].dtype, key
        assert torch.equal(ours[key], ref[key]), key


def test_bitmask_bit_order_is_little_endian_along_rows():
    w = torch.zeros(2, 10)
    w[0, 0] = 1.0  # bit 0 of byte 0
    w[0, 9] = 2.0  # bit 1 of byte 1
    w[1, 3] = 3.0
    p = bitmask.encode(w)
    assert p["bitmask"].tolist() == [[1, 2], [8, 0]]
    assert p["row_offsets"].tolist() == [0, 2]
    assert p["compressed"].tolist() == [1.0, 2.0, 3.0]


def test_teal_is_the_transpose():
    w = _random_sparse(5, 9, 0.3, torch.float32)
    p = teal.encode(w)
    assert p["w_t"].shape == (9, 5) and p["w_t"].is_contiguous()
    assert torch.equal(p["w_t"], w.T)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sizes_shrink_with_sparsity(fmt):
    dense_bytes = 256 * 256 * 2
    w = _two_four(256, 256, torch.float16) if fmt == "2:4" else _random_sparse(256, 256, 0.5, torch.float16)
    nbytes = sum(t.numel() * t.element_size() for t in _encode(fmt, w).values())
    if fmt in ("dense", "teal"):
        assert nbytes == dense_bytes
    else:
        assert nbytes < 0.7 * dense_bytes, (fmt, nbytes / dense_bytes)
