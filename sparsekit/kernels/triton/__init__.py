"""Triton kernels (the ``triton`` backend of ``sparsekit.ops``; reach them through ops.py).

They run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (set it before this
package's kernel modules are imported; that is how CI tests them). Each op is a
``torch.library.custom_op`` in the ``sparsekit_triton`` namespace with a fake implementation, so
``torch.compile`` and CUDA-graph capture treat it as one opaque call; ``nnz`` is read on the device
(no host sync).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _ops():
    from sparsekit.kernels.triton import _registry

    return _registry


def select(x, threshold: float):
    return _ops().select(x, threshold)


def teal_matvec(x, w_t, threshold: float):
    return _ops().teal_matvec(x, w_t, threshold)


def teal_matvec_sel(xs, idx, nnz, w_t):
    return _ops().teal_matvec_sel(xs, idx, nnz, w_t)


def spdp_matvec(x, values, bitmap, offsets, n: int, tile_rows: int, threshold: float):
    return _ops().spdp_matvec(x, values, bitmap, offsets, n, tile_rows, threshold)


def spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n: int, tile_rows: int):
    return _ops().spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n, tile_rows)


def spinfer_matmul(x, values, bitmaps, tile_offsets, group_offsets, n: int, k: int):
    return _ops().spinfer_matmul(x, values, bitmaps, tile_offsets, group_offsets, n, k)


def spdp_decode(values, bitmap, offsets, n: int, k: int, tile_rows: int):
    return _ops().spdp_decode(values, bitmap, offsets, n, k, tile_rows)


def rowdelta_matvec(x, values, deltas, row_offsets, n: int, k: int):
    return _ops().rowdelta_matvec(x, values, deltas, row_offsets, n, k)
