"""What a search computes: the s1 grid per total, the rows, and the settings that identify a search.

Notation (DESIGN.md): ``s1`` = weight sparsity, ``s2`` = activation sparsity, total
``F = 1 - (1 - s1)(1 - s2)``, so for a budget F and a weight sparsity ``s1 <= F`` the activation
sparsity is ``s2 = 1 - (1 - F) / (1 - s1)``. This module is torch-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sparsekit.errors import BadInput, check_fraction

DEFAULT_GRID = tuple(i / 10 for i in range(10))  # 0, 0.1, ..., 0.9 (each the closest float to i/10)


def s2_for(total: float, s1: float) -> float:
    """The activation sparsity that completes weight sparsity ``s1`` to the total budget."""
    return 1.0 - (1.0 - total) / (1.0 - s1)


@dataclass(frozen=True, order=True)
class Config:
    """One row of the search: sorted by (s1, total), so rows of one pruned model are adjacent."""

    s1: float
    total: float

    @property
    def s2(self) -> float:
        return 0.0 if self.total == 0 else s2_for(self.total, self.s1)

    @property
    def dense(self) -> bool:
        return self.total == 0


DENSE = Config(s1=0.0, total=0.0)


def check_totals(totals) -> list[float]:
    if not totals:
        raise BadInput("give at least one --total budget, e.g. --total 0.5.")
    return sorted({check_fraction("--total", float(t), low_open=True) for t in totals})


def parse_grid(text: str | None) -> list[float] | None:
    """``"0,0.1,0.25"`` -> sorted unique floats in [0, 1); None -> None (the default grid)."""
    if text is None:
        return None
    values = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise BadInput(f"--s1-grid must be comma-separated numbers such as 0,0.1,0.2; "
                           f"{part!r} is not a number.") from None
        values.add(check_fraction("--s1-grid value", value))
    if not values:
        raise BadInput("--s1-grid is empty; give comma-separated weight sparsities such as 0,0.1,0.2.")
    return sorted(values)


def grids(totals: list[float], grid: list[float] | None, nm: tuple[int, int] | None = None) -> dict[float, list[float]]:
    """The weight sparsities tried for each total, endpoints included (s1 = 0 and, if reachable, s1 = F).

    ``grid`` None means the default 0, 0.1, ..., 0.9. A user grid value above every total is bad
    input; values above one total are skipped for that total. With an N:M or N:M-out structure the
    weight sparsity is fixed to N/M, so the grid is {0, N/M} and ``grid`` must not be given.
    """
    if nm is not None:
        if grid is not None:
            from sparsekit.pruning.masks import structure_label

            raise BadInput(f"--s1-grid cannot be used with --structure {structure_label(nm)}, which fixes the weight "
                           f"sparsity to {nm[0] / nm[1]:g}.")
        fixed = nm[0] / nm[1]
        return {t: [0.0] + ([fixed] if fixed <= t else []) for t in totals}
    if grid is not None:
        too_big = [g for g in grid if g > max(totals)]
        if too_big:
            raise BadInput(f"--s1-grid value {too_big[0]:g} is larger than the total budget {max(totals):g}, "
                           "so it leaves no room for activation sparsity.")
    base = DEFAULT_GRID if grid is None else grid
    return {t: sorted({0.0, t, *(g for g in base if g <= t)}) for t in totals}


def configs_for(totals: list[float], grid: list[float] | None, nm: tuple[int, int] | None = None) -> list[Config]:
    """Every row to compute, the dense row (s1 = s2 = 0) first, then by s1 and total."""
    rows = {DENSE}
    for total, s1s in grids(totals, grid, nm).items():
        rows.update(Config(s1=s1, total=total) for s1 in s1s)
    return sorted(rows)


@dataclass(frozen=True)
class Settings:
    """Everything that changes a search's numbers; fixed in ``search.json`` of the search dir.

    The totals and the grid are not part of it: a later run may add totals or grid points to the
    same dir and reuse its pruned models and calibrations.
    """

    model: str
    model_signature: dict
    method: str
    structure: str
    greedy: bool
    calib_dataset: str
    eval_dataset: str
    nsamples: int
    seqlen: int
    eval_windows: int | None
    seed: int
    dtype: str
    # what a cached pruned model and calibration were made with: 2 = disjoint calibration windows,
    # relative o_proj thresholds, 8192-token in-use correction (a dir from before is refused unless --force)
    calibration_protocol: int = 2

    def as_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: dict) -> list[str]:
        mine = self.as_dict()
        return [k for k in mine if other.get(k) != mine[k]] + [k for k in other if k not in mine]
