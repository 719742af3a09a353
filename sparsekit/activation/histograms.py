"""Histograms of |x| with float-aligned log bins, and thresholds read from them.

TEAL reads the positive half of a 10 000-bin linear histogram and assumes a zero-centred symmetric
distribution. Here the statistic is built on |x| directly, with bins whose *relative* width is
constant, so the resolution does not depend on the scale of a site's activations:

- the range [2^LOG2_MIN, 2^LOG2_MAX) is split into octaves, each into ``PER_OCTAVE`` equal-width
  bins. The bin of a positive float32 value is just the top bits of its bit pattern (exponent and
  the first 9 mantissa bits), so binning is an integer shift (no log, no rounding at bin edges) and
  every bin edge is an exact float32. Relative bin width is 1/512 .. 1/1024;
- exact counts are kept of zeros, of non-zero values below the range (``under``) and of values
  above it (``over``, where NaN and inf also land), plus the largest |x| seen.

The threshold for sparsity ``s`` is the ``s``-quantile of |x|: the fraction of entries with
``|x| <= t`` equals ``s``, interpolating linearly inside a bin (bins are linear within an octave).
The masking rule everywhere is "keep x where |x| > t"; ``s = 0`` gives ``t = 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOG2_MIN = -20
LOG2_MAX = 16
PER_OCTAVE_BITS = 9
PER_OCTAVE = 1 << PER_OCTAVE_BITS
NBINS = (LOG2_MAX - LOG2_MIN) * PER_OCTAVE
_SHIFT = 23 - PER_OCTAVE_BITS  # float32 mantissa bits dropped
_BASE = (127 + LOG2_MIN) << PER_OCTAVE_BITS  # (bits >> _SHIFT) of 2^LOG2_MIN
LOW = 2.0 ** LOG2_MIN
HIGH = 2.0 ** LOG2_MAX
STATS = ("zeros", "under", "over", "max")  # per-slot scalars stored beside the counts


def layout() -> dict:
    """The bin layout, recorded with every calibration so a reader can check it."""
    return {"kind": "float32-bits", "log2_min": LOG2_MIN, "log2_max": LOG2_MAX, "per_octave": PER_OCTAVE,
            "bins": NBINS}


def bin_edges() -> torch.Tensor:
    """The ``NBINS + 1`` bin edges (float64, exact float32 values)."""
    bits = (torch.arange(NBINS + 1, dtype=torch.int64) + _BASE) << _SHIFT
    return bits.to(torch.int32).view(torch.float32).double()


_FULL = 1 << (31 - _SHIFT)  # every non-negative float32 bit pattern >> _SHIFT


class Accumulator:
    """Counts |x| for ``slots`` independent streams (e.g. the 4 input sites of one layer) on a device.

    While accumulating, every float32 octave is binned (``bits >> 14``: one shift and a bincount
    per call, integer counts); ``result`` folds what lies outside the stored range into the
    ``under``/``over`` counts. Index 0 holds exact zeros (and float32 subnormals below 2^-135,
    which no fp16/bf16 value is).
    """

    def __init__(self, slots: int, device: torch.device):
        self.counts = torch.zeros(slots, _FULL, dtype=torch.int64, device=device)

    @torch.no_grad()
    def add(self, slot: int, x: torch.Tensor) -> None:
        v = x.detach().reshape(-1).float().abs()  # a fresh float32 tensor
        idx = v.view(torch.int32).bitwise_right_shift_(_SHIFT)
        self.counts[slot] += torch.bincount(idx, minlength=_FULL)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts [slots, NBINS] float64, stats [slots, len(STATS)] float64) on the CPU."""
        c = self.counts.cpu()
        hi = _BASE + NBINS
        zeros, under, over = c[:, 0], c[:, 1:_BASE].sum(1), c[:, hi:].sum(1)
        # the largest value seen, to the bin: upper edge of the last non-empty bin (inf/NaN: the top)
        last = ((c > 0).to(torch.int64) * torch.arange(_FULL)).max(1).values + 1
        last = last.clamp(max=(255 << PER_OCTAVE_BITS) - 1)  # largest finite float32 octave
        vmax = (last << _SHIFT).to(torch.int32).view(torch.float32).double()
        stats = torch.stack([zeros.double(), under.double(), over.double(), vmax], 1)
        return c[:, _BASE:hi].double().contiguous(), stats


@dataclass
class Quantiles:
    """Precomputed CDFs of a stack of histograms, for fast thresholds at any sparsity."""

    cum: torch.Tensor  # [n, NBINS] float64: entries <= the upper edge of each bin (zeros and 'under' included)
    counts: torch.Tensor  # [n, NBINS]
    stats: torch.Tensor  # [n, len(STATS)]

    @classmethod
    def of(cls, counts: torch.Tensor, stats: torch.Tensor) -> "Quantiles":
        counts = counts.reshape(-1, NBINS).double()
        stats = stats.reshape(-1, len(STATS)).double()
        below = stats[:, 0] + stats[:, 1]
        return cls(cum=counts.cumsum(1) + below[:, None], counts=counts, stats=stats)

    @property
    def total(self) -> torch.Tensor:
        return self.cum[:, -1] + self.stats[:, 2]

    def thresholds(self, s: torch.Tensor | float) -> torch.Tensor:
        """Thresholds t (float64 [n]) so that a fraction ``s`` (per row, or one value) of entries has |x| <= t."""
        n = self.cum.shape[0]
        s = torch.as_tensor(s, dtype=torch.float64).expand(n).contiguous()
        zeros, under, over, vmax = self.stats.unbind(1)
        k = s * self.total
        edges = bin_edges()
        j = torch.searchsorted(self.cum, k[:, None]).squeeze(1).clamp(max=NBINS - 1)
        before = torch.where(j > 0, self.cum.gather(1, (j - 1).clamp(min=0)[:, None]).squeeze(1), zeros + under)
        cnt = self.counts.gather(1, j[:, None]).squeeze(1)
        frac = ((k - before) / cnt.clamp(min=1e-300)).clamp(0, 1)
        t = edges[j] + frac * (edges[j + 1] - edges[j])
        # below the binned range: linear between 0 and 2^LOG2_MIN
        t_under = ((k - zeros) / under.clamp(min=1e-300)).clamp(0, 1) * LOW
        t = torch.where(k <= zeros + under, t_under, t)
        # above it: linear between 2^LOG2_MAX and the largest value seen
        hi = vmax.clamp(min=HIGH)
        t_over = HIGH + ((k - self.cum[:, -1]) / over.clamp(min=1e-300)).clamp(0, 1) * (hi - HIGH)
        t = torch.where(k > self.cum[:, -1], t_over, t)
        return torch.where(k <= zeros, torch.zeros_like(t), t)

    def sparsity_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """Fraction of entries with |x| <= t according to the histogram (inverse of ``thresholds``)."""
        n = self.cum.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).expand(n).contiguous()
        edges = bin_edges()
        j = (torch.searchsorted(edges, t, right=True) - 1).clamp(0, NBINS - 1)
        before = torch.where(j > 0, self.cum.gather(1, (j - 1).clamp(min=0)[:, None]).squeeze(1),
                             self.stats[:, 0] + self.stats[:, 1])
        frac = ((t - edges[j]) / (edges[j + 1] - edges[j])).clamp(0, 1)
        k = before + frac * self.counts.gather(1, j[:, None]).squeeze(1)
        k = torch.where(t < LOW, self.stats[:, 0] + self.stats[:, 1] * (t / LOW).clamp(0, 1), k)
        span = (self.stats[:, 3] - HIGH).clamp(min=1e-300)
        k = torch.where(t >= HIGH, self.cum[:, -1] + self.stats[:, 2] * ((t - HIGH) / span).clamp(0, 1), k)
        return (k / self.total).clamp(0, 1)
