"""SparseGPT (Frantar & Alistarh, 2023): prune with optimal-brain-surgeon weight updates.

Written from the paper's Algorithm 1. For a linear with weight ``W [rows, cols]`` and calibration
inputs ``X [tokens, cols]``:

1. ``H = 2 X^T X / tokens`` (float32). Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weight
   column is set to 0. Damping: ``H += 0.01 * mean(diag H) * I``.
2. ``U = cholesky(H^-1, upper=True)``. Row j of U is row j of the inverse Hessian of the columns
   j.. (after the earlier columns were eliminated), divided by the square root of its diagonal,
   so ``U_jj^2`` is that inverse's diagonal entry and ``U[j, j:] / U_jj`` the OBS update direction.
3. Columns are visited in blocks of 128. The mask is chosen per block from the OBS saliency
   ``W_ij^2 / U_jj^2`` of the weights as they are when the block starts:
   - unstructured: in every row, the ``int(i2 * s) - int(i1 * s)`` lowest saliencies of block
     ``[i1, i2)`` are pruned, so every row ends with exactly ``int(cols * s)`` zeros, the same
     count as Wanda and magnitude (the original code thresholds a block over all rows at once;
     a per-row count keeps the row sparsity exact and makes rows independent);
   - N:M: at the first column of each group of M, the N lowest saliencies of the group (taken
     from the weights updated by every earlier column) are pruned;
   - N:M-out: the mask of column j is chosen when column j is processed (not per block), from
     the saliencies ``W_ij^2 / U_jj^2`` of that column as updated by every earlier column: in
     every group of M consecutive rows (groups start at row 0) the N lowest are pruned, ties to
     the lower row index. ``U_jj`` is one number per column, so within a group this ranks the
     updated ``|W_ij|``; the choice still differs from magnitude's because earlier columns'
     errors have moved the weights. Needs rows divisible by M; any M works with any block size.
     (A dead input's column is all zero, so its groups hold M zeros, not N.)
   Ties go to the lower column index (N:M-out: row index). Column j's error ``(w_j - q_j) / U_jj``
   updates the later columns of the block at once and the later blocks in one matrix product at
   the block's end.

Rows are independent, so linears that read the same input (q/k/v, gate/up) are pruned as one
matrix with one Hessian and one factorisation (N:M-out ties rows only within a group of M rows,
and each linear's out_features is a multiple of M, so stacking them changes no group).
"""
from __future__ import annotations

import torch

from sparsekit.errors import Failure
from sparsekit.pruning.masks import axis_of, lowest_k, nm_out_mask, prune_count

BLOCKSIZE = 128
PERCDAMP = 0.01


class Hessian:
    """Running ``X^T X`` of a linear's input in float32; ``take()`` hands over ``2 X^T X / n``."""

    def __init__(self, features: int, device: torch.device):
        self.xtx: torch.Tensor | None = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """``x``: ``[tokens, features]`` in any float dtype."""
        xf = x.float()
        self.xtx.addmm_(xf.t(), xf)
        self.tokens += x.shape[0]

    def take(self) -> torch.Tensor:
        """The Hessian ``2 X^T X / tokens``; the accumulator gives up its buffer (it is reused in place)."""
        h, self.xtx = self.xtx, None
        return h.mul_(2.0 / max(self.tokens, 1))


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    nm: tuple[int, int] | None = None, blocksize: int = BLOCKSIZE,
                    percdamp: float = PERCDAMP) -> torch.Tensor:
    """Return the pruned and updated ``weight`` ``[rows, cols]`` in float32.

    ``nm``: None (unstructured), an ``NM`` / plain ``(N, M)`` pair (N:M) or an ``NM`` with axis
    "out" (N:M-out). ``hessian`` ``[cols, cols]`` (float32) is consumed: it is modified in place
    and released, so pass it without keeping another reference if device memory matters.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian is {tuple(hessian.shape)}, expected ({cols}, {cols}).")
    out_axis = nm is not None and axis_of(nm) == "out"
    if out_axis and rows % nm[1]:
        raise ValueError(f"N:M-out needs rows divisible by M={nm[1]}, got {rows}.")
    if nm is not None and not out_axis and blocksize % nm[1]:
        raise ValueError(f"blocksize {blocksize} is not a multiple of M={nm[1]}.")
    W = weight.detach().to(torch.float32, copy=True)
    H = hessian
    del hessian
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    W[:, dead] = 0.0
    diag.add_(percdamp * diag.mean())
    L, info = torch.linalg.cholesky_ex(H)
    del H, diag
    if int(info) == 0:
        Hinv = torch.cholesky_inverse(L)
        del L
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
        del Hinv
    if int(info) != 0:
        raise Failure("SparseGPT: the damped Hessian of a linear layer is not positive definite (Cholesky failed); "
                      "use more calibration samples or a float32 --dtype.")

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = U1.diagonal()
        if nm is None:
            k = prune_count(i2, sparsity) - prune_count(i1, sparsity)
            mask1 = lowest_k(W1 * W1 / (d * d), k)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if out_axis:  # this column's saliencies, after every earlier column's update
                sal = W1[:, i : i + 1] * W1[:, i : i + 1] / (d[i] * d[i])
                mask1[:, i] = nm_out_mask(sal, nm[0], nm[1])[:, 0]
            elif nm is not None and i % nm[1] == 0:
                g = W1[:, i : i + nm[1]]
                dg = d[i : i + nm[1]]
                mask1[:, i : i + nm[1]] = lowest_k(g * g / (dg * dg), nm[0])
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            err = (w - q) / d[i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Q1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        if i2 < cols:
            W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
    return W
