"""The greedy per-layer allocation (sparsekit/activation/greedy.py) on synthetic objectives."""
from __future__ import annotations

import math

import pytest
import torch

from sparsekit.activation.greedy import (COLUMNS, ORDER, GreedySettings, achieved_at, allocate, allocation_at,
                                         effective, step_sizes)
from sparsekit.errors import BadInput

# a GQA layer: k and v are 4x smaller than q and o, the MLP projections 2.75x larger
PARAMS = {"q": 4096, "k": 1024, "v": 1024, "o": 4096, "gate": 11264, "up": 11264, "down": 11264}
COST = {"q": 1.0, "k": 3.0, "v": 2.0, "o": 1.5, "gate": 0.5, "up": 0.7, "down": 2.5}  # error per unit s^2


def separable(alloc, _role=None):
    return sum(COST[r] * alloc[r] ** 2 for r in ORDER)


def test_steps_remove_about_equal_weight_reads():
    s = GreedySettings(steps=40, max_step=0.1)
    step = step_sizes(PARAMS, s)
    reads = {r: step[r] * PARAMS[r] for r in ORDER}
    uncapped = [r for r in ORDER if step[r] < s.max_step]
    assert uncapped == ["gate", "up", "down"]
    assert max(reads[r] for r in uncapped) == pytest.approx(min(reads[r] for r in uncapped))
    assert all(step[r] == s.max_step for r in ORDER if r not in uncapped)


def test_greedy_picks_the_cheapest_error_per_read_and_reaches_the_target():
    table, evals = allocate(PARAMS, separable, GreedySettings())
    assert table.shape[1] == len(COLUMNS)
    eff = table[:, 0]
    assert eff[0] == 0 and float(eff[-1]) >= 0.9 - 1e-9
    assert bool((eff[1:] > eff[:-1]).all())
    err = table[:, -1]
    assert bool((err[1:] >= err[:-1]).all())
    assert evals < 3 * table.shape[0]  # lazy: far fewer than 7 evaluations per step
    first = {r: float(table[1, 2 + i]) for i, r in enumerate(ORDER)}
    assert max(first, key=first.get) == "gate"  # cheapest error per weight read removed


def test_lazy_greedy_matches_eager_greedy_on_a_separable_objective():
    settings = GreedySettings(steps=30)
    step = step_sizes(PARAMS, settings)
    table, _ = allocate(PARAMS, separable, settings)
    alloc = {r: 0.0 for r in ORDER}
    eager = [dict(alloc)]
    while effective(alloc, PARAMS) < settings.max_effective - 1e-12:
        def score(r):
            new = dict(alloc, **{r: min(settings.max_sparsity, alloc[r] + step[r])})
            return (separable(new) - separable(alloc)) / ((new[r] - alloc[r]) * PARAMS[r])
        best = min((r for r in ORDER if alloc[r] < settings.max_sparsity), key=lambda r: (score(r), ORDER.index(r)))
        alloc[best] = min(settings.max_sparsity, alloc[best] + step[best])
        eager.append(dict(alloc))
    assert len(eager) == table.shape[0]
    for row, ref in zip(table, eager):
        assert [float(v) for v in row[2:9]] == pytest.approx([ref[r] for r in ORDER])


def test_allocation_at_interpolates_to_the_exact_effective_sparsity():
    table, _ = allocate(PARAMS, separable, GreedySettings())
    for s2 in (0.0, 0.123, 0.5, 0.9):
        alloc = allocation_at(table, s2)
        assert effective(alloc, PARAMS) == pytest.approx(s2, abs=1e-9)  # achieved == nominal here
        assert effective(achieved_at(table, s2), PARAMS) == pytest.approx(s2, abs=1e-9)
    with pytest.raises(BadInput, match="greedy"):
        allocation_at(table, 0.95)


def test_achieved_sparsity_drives_the_effective_column():
    # o and down see 10% more zeros than their nominal quantile (as in a real layer)
    def err(alloc, _role=None):
        achieved = dict(alloc, o=min(1.0, alloc["o"] * 1.1), down=min(1.0, alloc["down"] * 1.1))
        return separable(alloc), achieved

    table, _ = allocate(PARAMS, err, GreedySettings())
    assert bool((table[:, 0] >= table[:, 1] - 1e-12).all())
    s2 = 0.5
    alloc, ach = allocation_at(table, s2), achieved_at(table, s2)
    assert effective(ach, PARAMS) == pytest.approx(s2, abs=1e-9)
    assert effective(alloc, PARAMS) < s2


def test_non_finite_errors_are_never_chosen_over_finite_ones():
    def err(alloc, _role=None):
        return math.nan if alloc["q"] > 0 else separable(alloc)

    table, _ = allocate(PARAMS, err, GreedySettings(max_effective=0.5))
    assert float(table[:, 2].max()) == 0.0  # q never raised
    assert torch.isfinite(table[:, -1]).all()
