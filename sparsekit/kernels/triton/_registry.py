"""The Triton kernels wrapped as custom ops (``torch.ops.sparsekit_triton.*``) with fakes."""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekit.kernels.triton import common, rowdelta, spdp, spinfer, teal

_LIB = "sparsekit_triton"


def _out(x: Tensor, n: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], n))


@torch.library.custom_op(f"{_LIB}::select", mutates_args=())
def select(x: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    xs, idx, nnz = common.select(x, threshold)
    return xs, idx.clone(), nnz


@select.register_fake
def _(x, threshold):
    k = x.shape[-1]
    return torch.empty_like(x), x.new_empty((k,), dtype=torch.int32), x.new_empty((1,), dtype=torch.int32)


@torch.library.custom_op(f"{_LIB}::teal_matvec", mutates_args=())
def teal_matvec(x: Tensor, w_t: Tensor, threshold: float) -> Tensor:
    return teal.teal_matvec(x, w_t, threshold)


@teal_matvec.register_fake
def _(x, w_t, threshold):
    return _out(x, w_t.shape[1])


@torch.library.custom_op(f"{_LIB}::teal_matvec_sel", mutates_args=())
def teal_matvec_sel(xs: Tensor, idx: Tensor, nnz: Tensor, w_t: Tensor) -> Tensor:
    return teal.teal_matvec_sel(xs, idx, nnz, w_t)


@teal_matvec_sel.register_fake
def _(xs, idx, nnz, w_t):
    return _out(xs, w_t.shape[1])


@torch.library.custom_op(f"{_LIB}::spdp_matvec", mutates_args=())
def spdp_matvec(x: Tensor, values: Tensor, bitmap: Tensor, offsets: Tensor, n: int, tile_rows: int, threshold: float) -> Tensor:
    return spdp.spdp_matvec(x, values, bitmap, offsets, n, tile_rows, threshold)


@spdp_matvec.register_fake
def _(x, values, bitmap, offsets, n, tile_rows, threshold):
    return _out(x, n)


@torch.library.custom_op(f"{_LIB}::spdp_matvec_sel", mutates_args=())
def spdp_matvec_sel(xs: Tensor, idx: Tensor, nnz: Tensor, values: Tensor, bitmap: Tensor, offsets: Tensor, n: int, tile_rows: int) -> Tensor:
    return spdp.spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n, tile_rows)


@spdp_matvec_sel.register_fake
def _(xs, idx, nnz, values, bitmap, offsets, n, tile_rows):
    return _out(xs, n)


@torch.library.custom_op(f"{_LIB}::spinfer_matmul", mutates_args=())
def spinfer_matmul(x: Tensor, values: Tensor, bitmaps: Tensor, tile_offsets: Tensor, group_offsets: Tensor, n: int, k: int) -> Tensor:
    return spinfer.spinfer_matmul(x, values, bitmaps, tile_offsets, group_offsets, n, k)


@spinfer_matmul.register_fake
def _(x, values, bitmaps, tile_offsets, group_offsets, n, k):
    return _out(x, n)


@torch.library.custom_op(f"{_LIB}::spdp_decode", mutates_args=())
def spdp_decode(values: Tensor, bitmap: Tensor, offsets: Tensor, n: int, k: int, tile_rows: int) -> Tensor:
    return spdp.spdp_decode(values, bitmap, offsets, n, k, tile_rows)


@spdp_decode.register_fake
def _(values, bitmap, offsets, n, k, tile_rows):
    return values.new_empty((n, k))


@torch.library.custom_op(f"{_LIB}::rowdelta_matvec", mutates_args=())
def rowdelta_matvec(x: Tensor, values: Tensor, deltas: Tensor, row_offsets: Tensor, n: int, k: int) -> Tensor:
    return rowdelta.rowdelta_matvec(x, values, deltas, row_offsets, n, k)


@rowdelta_matvec.register_fake
def _(x, values, deltas, row_offsets, n, k):
    return _out(x, n)
