"""Histograms of |x| and thresholds read from them (sparsekit/activation/histograms.py)."""
from __future__ import annotations

import pytest
import torch

from sparsekit.activation.histograms import HIGH, LOW, NBINS, PER_OCTAVE, Accumulator, Quantiles, bin_edges


def _quantiles(*xs: torch.Tensor) -> Quantiles:
    acc = Accumulator(len(xs), torch.device("cpu"))
    for i, x in enumerate(xs):
        acc.add(i, x)
    return Quantiles.of(*acc.result())


def test_bin_edges_are_exact_float32_octaves():
    e = bin_edges()
    assert e.shape == (NBINS + 1,)
    assert e[0] == LOW and e[-1] == HIGH
    assert torch.equal(e.float().double(), e)  # every edge is a float32 value
    octave = e[::PER_OCTAVE]
    assert torch.allclose(octave[1:] / octave[:-1], torch.full_like(octave[1:], 2.0))
    rel = (e[1:] - e[:-1]) / e[:-1]
    assert rel.max() <= 1 / PER_OCTAVE + 1e-12 and rel.min() >= 1 / (2 * PER_OCTAVE) - 1e-12


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-4), (torch.float16, 1e-3), (torch.bfloat16, 6e-3)])
def test_threshold_gives_the_target_fraction(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    # a skewed, scale-mixed distribution: TEAL's symmetric-histogram assumption would be off here
    x = torch.cat([torch.randn(150_000, generator=gen) * 0.01 + 0.02, torch.randn(50_000, generator=gen) * 30])
    x[:100] = 0  # 0.05% exact zeros
    x = x.to(dtype)
    q = _quantiles(x)
    mags = x.float().abs()
    for s in (0.001, 0.05, 0.25, 0.5, 0.75, 0.9, 0.99):
        t = float(q.thresholds(s)[0])
        achieved = float((mags <= t).double().mean())
        assert abs(achieved - s) <= tol, (s, t, achieved)


def test_zero_sparsity_gives_zero_threshold_and_zeros_are_counted_exactly():
    x = torch.tensor([0.0, 0.0, -1.0, 2.0, 3.0, -4.0, 0.0, 5.0])
    q = _quantiles(x)
    assert float(q.thresholds(0.0)[0]) == 0.0
    assert float(q.thresholds(3 / 8)[0]) == 0.0  # the three zeros already give 3/8
    t = float(q.thresholds(0.5)[0])
    assert 1.0 <= t < 2.0
    assert float(q.stats[0, 0]) == 3.0


def test_values_outside_the_binned_range_are_kept():
    x = torch.cat([torch.full((10,), 1e-9), torch.ones(80), torch.full((10,), 1e6)])
    acc = Accumulator(1, torch.device("cpu"))
    acc.add(0, x)
    counts, stats = acc.result()
    assert counts.sum() == 80 and stats[0, 1] == 10 and stats[0, 2] == 10
    assert stats[0, 3] >= 1e6  # the largest value, to the bin
    q = Quantiles.of(counts, stats)
    assert 0 < float(q.thresholds(0.05)[0]) < LOW
    assert HIGH < float(q.thresholds(0.95)[0]) <= float(stats[0, 3])


def test_sparsity_at_inverts_thresholds():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1)).exp()
    q = _quantiles(x, 3 * x)
    s = torch.tensor([0.1, 0.6], dtype=torch.float64)
    assert torch.allclose(q.sparsity_at(q.thresholds(s)), s, atol=1e-9)
    t = q.thresholds(0.3)
    assert torch.allclose(t[1] / t[0], torch.tensor(3.0, dtype=torch.float64), rtol=2e-3)  # scale-free bins


def test_accumulator_sums_over_calls_and_slots_are_independent():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(1000, 7, generator=gen), torch.randn(300, 7, generator=gen) * 5
    acc = Accumulator(2, torch.device("cpu"))
    acc.add(0, a)
    acc.add(0, b)
    acc.add(1, torch.cat([a.reshape(-1), b.reshape(-1)]))
    counts, stats = acc.result()
    assert torch.equal(counts[0], counts[1]) and torch.equal(stats[0], stats[1])
    assert counts[0].sum() + stats[0, :3].sum() == a.numel() + b.numel()
