"""Which weights to zero, given a score per weight (lower score = pruned first).

The exact rules (others must be able to reproduce our masks):

- unstructured: per output row, the ``int(in_features * sparsity)`` lowest scores are zeroed;
- N:M: in every group of M consecutive input columns of a row (groups start at column 0), the N
  lowest scores are zeroed (so 2:4 zeroes 2 of every 4 weights, sparsity N/M);
- ties are broken by column index (a stable ascending sort; the first k indices are zeroed).

Also the validation of the settings that choose a mask, shared by the CLI and ``prune_model``.
"""
from __future__ import annotations

import torch

from sparsekit.errors import BadInput, check_fraction

METHODS = ("wanda", "sparsegpt", "magnitude")


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 0 < N < M; anything else -> BadInput."""
    text = str(structure).strip().lower()
    if text == "unstructured":
        return None
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise BadInput(f"--structure must be 'unstructured' or N:M with 0 < N < M (such as 2:4 or 4:8), got {structure!r}.")


def check_settings(method: str, sparsity: float | None, structure: str) -> tuple[float, tuple[int, int] | None]:
    """Validate method / sparsity / structure; return ``(sparsity, (N, M) or None)``.

    With an N:M structure the sparsity may be omitted (it is N/M); given, it must equal N/M.
    """
    method = getattr(method, "value", method)
    if method not in METHODS:
        raise BadInput(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}.")
    nm = parse_structure(structure)
    if sparsity is None:
        if nm is None:
            raise BadInput("--sparsity is required for unstructured pruning (it may be omitted only with an N:M --structure).")
        return nm[0] / nm[1], nm
    sparsity = check_fraction("--sparsity", float(sparsity))
    if nm is not None and abs(sparsity - nm[0] / nm[1]) > 1e-9:
        raise BadInput(f"--structure {nm[0]}:{nm[1]} zeroes {nm[0]} of every {nm[1]} weights, so --sparsity must be "
                       f"{nm[0] / nm[1]:g} (or omitted), got {sparsity:g}.")
    return sparsity, nm


def prune_count(columns: int, sparsity: float) -> int:
    """How many of ``columns`` weights of a row are zeroed at ``sparsity`` (``int(columns * sparsity)``)."""
    return int(columns * sparsity)


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask, True at the ``k`` lowest entries along the last dim (stable: lower index first)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    idx = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
    return mask.scatter_(-1, idx, True)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the ``n`` lowest scores of every group of ``m`` consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise BadInput(f"N:M pruning needs in_features divisible by {m}, got {cols}.")
    return lowest_k(scores.reshape(rows, cols // m, m), n).reshape(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """The pruning mask (True = zero this weight) of a 2-D score matrix ``[out, in]``."""
    if nm is not None:
        return nm_mask(scores, *nm)
    return lowest_k(scores, prune_count(scores.shape[-1], sparsity))
