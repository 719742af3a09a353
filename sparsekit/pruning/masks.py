"""Which weights to zero, given a score per weight (lower score = pruned first).

The exact rules (others must be able to reproduce our masks):

- unstructured: per output row, the ``int(in_features * sparsity)`` lowest scores are zeroed;
- N:M: in every group of M consecutive input columns of a row (groups start at column 0), the N
  lowest scores are zeroed (so 2:4 zeroes 2 of every 4 weights, sparsity N/M);
- ties are broken by column index (a stable ascending sort; the first k indices are zeroed);
- N:M-out (written ``2:4-out``): in every group of M consecutive output rows of an input column
  (groups start at row 0), the N lowest scores are zeroed (sparsity N/M; every column keeps
  exactly M - N of every M rows); ties are broken by row index (a stable ascending sort; the
  first N indices of the group are zeroed). It needs out_features divisible by M.

An N:M structure is handed around as ``NM``: the pair ``(N, M)`` (so ``n, m = nm`` works) with
``nm.axis`` "in" (N:M) or "out" (N:M-out); a plain ``(N, M)`` tuple means N:M.

Also the validation of the settings that choose a mask, shared by the CLI and ``prune_model``.
"""
from __future__ import annotations

import torch

from sparsekit.errors import BadInput, check_fraction

METHODS = ("wanda", "sparsegpt", "magnitude")


AXES = ("in", "out")
OUT_SUFFIX = "-out"


class NM(tuple):
    """An N:M structure: the pair ``(N, M)`` plus ``axis``, "in" (groups of M input columns of a
    row: ``N:M``) or "out" (groups of M output rows of a column: ``N:M-out``).

    An "in" structure equals (and hashes like) the plain tuple ``(N, M)``, so code written for
    pairs keeps working; an "out" structure never equals a plain pair.
    """

    def __new__(cls, n: int, m: int, axis: str = "in"):
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}.")
        self = super().__new__(cls, (int(n), int(m)))
        self.axis = axis
        return self

    def __getnewargs__(self):
        return (self[0], self[1], self.axis)

    @property
    def n(self) -> int:
        return self[0]

    @property
    def m(self) -> int:
        return self[1]

    @property
    def label(self) -> str:
        """``"2:4"`` or ``"2:4-out"``: the ``--structure`` spelling."""
        return structure_label(self)

    def __eq__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented
        return tuple.__eq__(self, other) and axis_of(other) == self.axis

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return tuple.__hash__(self) if self.axis == "in" else hash((self[0], self[1], self.axis))

    def __repr__(self):
        return f"NM({self[0]}, {self[1]}" + (", axis='out')" if self.axis == "out" else ")")


def axis_of(nm) -> str:
    """The axis of an N:M structure: ``nm.axis`` for an ``NM``, "in" for a plain ``(N, M)`` pair."""
    return getattr(nm, "axis", "in")


def structure_label(nm) -> str:
    """``"unstructured"``, ``"N:M"`` or ``"N:M-out"`` for None / an ``(N, M)`` pair / an ``NM``."""
    if nm is None:
        return "unstructured"
    return f"{nm[0]}:{nm[1]}" + (OUT_SUFFIX if axis_of(nm) == "out" else "")


def parse_structure(structure: str) -> NM | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> ``NM(N, M)`` (equal to the pair (N, M)) and
    ``"N:M-out"`` -> ``NM(N, M, axis="out")``, with 0 < N < M (case-insensitive); anything else
    -> BadInput."""
    text = str(structure).strip().lower()
    if text == "unstructured":
        return None
    axis = "in"
    if text.endswith(OUT_SUFFIX):
        text, axis = text[: -len(OUT_SUFFIX)], "out"
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return NM(n, m, axis)
    raise BadInput(f"--structure must be 'unstructured', N:M or N:M-out with 0 < N < M (such as 2:4, 4:8 or "
                   f"2:4-out), got {structure!r}.")


def check_settings(method: str, sparsity: float | None, structure: str) -> tuple[float, NM | None]:
    """Validate method / sparsity / structure; return ``(sparsity, NM or None)``.

    With an N:M or N:M-out structure the sparsity may be omitted (it is N/M); given, it must equal N/M.
    """
    method = getattr(method, "value", method)
    if method not in METHODS:
        raise BadInput(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}.")
    nm = parse_structure(structure)
    if sparsity is None:
        if nm is None:
            raise BadInput("--sparsity is required for unstructured pruning (it may be omitted only with an N:M or N:M-out --structure).")
        return nm[0] / nm[1], nm
    sparsity = check_fraction("--sparsity", float(sparsity))
    if nm is not None and abs(sparsity - nm[0] / nm[1]) > 1e-9:
        raise BadInput(f"--structure {nm.label} zeroes {nm[0]} of every {nm[1]} weights, so --sparsity must be "
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


def nm_out_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the ``n`` lowest scores of every group of ``m`` consecutive rows of each column."""
    rows, cols = scores.shape
    if rows % m:
        raise BadInput(f"N:M-out pruning needs out_features divisible by {m}, got {rows}.")
    grouped = scores.reshape(rows // m, m, cols).transpose(1, 2)  # [groups, cols, m]: a group's rows last
    return lowest_k(grouped, n).transpose(1, 2).reshape(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """The pruning mask (True = zero this weight) of a 2-D score matrix ``[out, in]``; ``nm`` is
    None (unstructured), an ``NM`` or a plain ``(N, M)`` pair (N:M)."""
    if nm is not None:
        if axis_of(nm) == "out":
            return nm_out_mask(scores, nm[0], nm[1])
        return nm_mask(scores, nm[0], nm[1])
    return lowest_k(scores, prune_count(scores.shape[-1], sparsity))
