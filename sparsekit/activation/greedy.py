"""Greedy per-layer allocation of activation sparsity over the seven projections (TEAL, refined).

For one decoder layer, starting from sparsity 0 everywhere, repeatedly raise the sparsity of the
projection whose step adds the least output error per weight read removed, and record the
allocation after every step (one row of ``COLUMNS``):

- ``s_<role>``: the *nominal* sparsity of each projection: its threshold is the ``s``-quantile of
  the dense histogram of its input site (what the thresholds are computed from);
- ``a_<role>``: the sparsity *achieved* at that projection's input with every threshold of the
  layer on (o and down see the already-sparsified attention / MLP, so they differ from nominal);
- ``effective``: the parameter-weighted mean of the achieved sparsities, i.e. the fraction of the
  layer's weight reads that activation sparsity skips (``nominal`` is the same from ``s_``).

Refinements over TEAL's block-wise greedy:

- step sizes are parameter-count weighted: a step raises a projection's sparsity by
  ``reads / params`` (capped at ``max_step`` for small projections such as GQA's k and v), so
  every step removes about the same number of weight reads, and candidates are compared by error
  increase per weight read removed;
- lazy evaluation: a candidate's score is re-measured only when it is the best stale score (the
  marginal error of a projection barely moves when another projection steps), so a step costs
  about one or two layer forwards instead of seven.

``error(allocation, changed_role)`` is supplied by the caller (the layer's relative output error
on calibration inputs, and optionally the achieved sparsity per projection); this module is pure
arithmetic on it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch

from sparsekit.errors import BadInput
from sparsekit.models import ROLES

ORDER = tuple(ROLES)  # q k v o gate up down
COLUMNS = ("effective", "nominal") + tuple(f"s_{r}" for r in ORDER) + tuple(f"a_{r}" for r in ORDER) + ("error",)
_S = 2  # first s_ column
_A = _S + len(ORDER)  # first a_ column


@dataclass(frozen=True)
class GreedySettings:
    steps: int = 32  # steps a projection-size-neutral walk would take to reach max_effective
    max_effective: float = 0.9  # record the allocation up to this effective sparsity
    max_step: float = 0.125  # largest single sparsity step of one projection
    max_sparsity: float = 0.99  # no projection beyond this
    tokens: int | None = None  # calibration tokens per layer for the error [None: 4096 on a GPU, 1024 on CPU]

    def as_dict(self) -> dict:
        return asdict(self)


def step_sizes(params: Mapping[str, int], settings: GreedySettings) -> dict[str, float]:
    reads = settings.max_effective * sum(params.values()) / settings.steps
    return {r: min(settings.max_step, reads / params[r]) for r in ORDER}


def effective(alloc: Mapping[str, float], params: Mapping[str, int]) -> float:
    return sum(alloc[r] * params[r] for r in ORDER) / sum(params[r] for r in ORDER)


def allocate(params: Mapping[str, int], error: Callable, settings: GreedySettings = GreedySettings(),
             accept: Callable | None = None) -> tuple[torch.Tensor, int]:
    """The greedy table ``[steps + 1, len(COLUMNS)]`` (float64, row 0 = dense) and the number of
    ``error`` evaluations it took. Stops once the achieved effective sparsity reaches
    ``settings.max_effective`` (or every projection is at ``max_sparsity``).

    ``error(allocation, changed_role)`` returns the error, or ``(error, achieved)``, or ``(error,
    achieved, token)``; ``accept(token)`` is called when that evaluation's step is taken
    (``changed_role`` is None for the first, dense evaluation).
    """
    step = step_sizes(params, settings)
    evals = 0

    def measure(alloc: dict[str, float], role: str | None):
        nonlocal evals
        evals += 1
        res = error(dict(alloc), role)
        res = res if isinstance(res, tuple) else (res,)
        e = float(res[0]) if math.isfinite(float(res[0])) else math.inf
        achieved = dict(res[1]) if len(res) > 1 and res[1] else dict(alloc)
        return e, achieved, (res[2] if len(res) > 2 else None)

    alloc = {r: 0.0 for r in ORDER}
    err, achieved, token = measure(alloc, None)
    if accept is not None:
        accept(token)
    version = 0

    def row() -> list[float]:
        return [effective(achieved, params), effective(alloc, params), *(alloc[r] for r in ORDER),
                *(achieved[r] for r in ORDER), err]

    rows = [row()]

    def candidate(role: str):
        if alloc[role] >= settings.max_sparsity - 1e-12:
            return None
        new = dict(alloc)
        new[role] = min(settings.max_sparsity, alloc[role] + step[role])
        e, ach, tok = measure(new, role)
        reads = (new[role] - alloc[role]) * params[role]
        return ((e - err) / reads, e, ach, tok, new[role], version)

    cands = {r: candidate(r) for r in ORDER}
    while rows[-1][0] < settings.max_effective - 1e-12:
        live = {r: c for r, c in cands.items() if c is not None}
        if not live:
            break
        role = min(live, key=lambda r: (live[r][0], ORDER.index(r)))
        _score, e, ach, tok, s_new, ver = live[role]
        if ver != version:  # stale: re-measure at the current allocation, then choose again
            cands[role] = candidate(role)
            continue
        alloc[role], err, achieved = s_new, e, ach
        if accept is not None:
            accept(tok)
        version += 1
        rows.append(row())
        cands[role] = candidate(role)
    return torch.tensor(rows, dtype=torch.float64), evals


def _at(table: torch.Tensor, s2: float) -> torch.Tensor:
    eff = table[:, 0]
    top = float(eff.max())
    if s2 > top + 1e-9:
        raise BadInput(f"the greedy allocation was recorded up to activation sparsity {top:.3f}; "
                       f"{s2} is beyond it (use uniform thresholds).")
    hit = torch.nonzero(eff >= s2 - 1e-12)
    k = int(hit[0]) if hit.numel() else table.shape[0] - 1
    if k == 0:
        return table[0]
    lo, hi = table[k - 1], table[k]
    span = float(hi[0] - lo[0])
    a = 1.0 if span <= 0 else min(max((s2 - float(lo[0])) / span, 0.0), 1.0)
    return lo + a * (hi - lo)


def allocation_at(table: torch.Tensor, s2: float) -> dict[str, float]:
    """Nominal per-projection sparsities at achieved effective sparsity ``s2`` (interpolated
    between the two recorded steps around the first crossing of ``s2``)."""
    row = _at(table, s2)
    return {r: float(row[_S + i]) for i, r in enumerate(ORDER)}


def achieved_at(table: torch.Tensor, s2: float) -> dict[str, float]:
    """The achieved per-projection sparsities recorded (interpolated) at effective sparsity ``s2``."""
    row = _at(table, s2)
    return {r: float(row[_A + i]) for i, r in enumerate(ORDER)}
