"""Put activation thresholds on a plain HF model: forward-pre hooks on its nn.Linear modules.

Masking rule (the same everywhere in sparsekit): keep x where |x| > t, zero it elsewhere. The
threshold is compared in the input's own dtype, rounded *down* to a value of that dtype, so the
comparison is exact: |x| > t in real numbers iff |x| > floor_dtype(t). Linears named in
``Thresholds.relative`` use the relative rule instead: keep x where |x| > t * mean|x| over the
token's channels (``kernels.reference.mask_relative``, compared in float32).

Which tokens are sparsified (``prefill``):

- a forward pass of one token per sequence (a decode step) is always sparsified;
- ``"all"`` (default): every token of a multi-token forward too — perplexity with S2 everywhere;
- ``"later_half"``: only positions >= T // 2 of a T-token forward (each perplexity window);
  the first half plays the dense prompt, as in TEAL's evaluation;
- ``"none"``: multi-token forwards stay dense (prefill off, decode sparse: the runtime default).

This is the evaluation path (and works under ``generate``); the fast runtime (SparseLinear with
kernels) reads the same thresholds from ``Calibration.thresholds``.
"""
from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch import nn

from sparsekit.errors import BadInput
from sparsekit.kernels.reference import token_scale

PREFILL = ("all", "later_half", "none")


def check_prefill(prefill: str) -> str:
    value = prefill.replace("-", "_")
    if value not in PREFILL:
        raise BadInput(f"prefill must be one of all, later-half or none, got {prefill!r}.")
    return value


@functools.lru_cache(maxsize=65536)
def floor_to(t: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` that is <= t, as a Python float (exact in ``dtype``)."""
    if t <= 0 or dtype in (torch.float64,):
        return max(float(t), 0.0)
    v = torch.tensor(t, dtype=torch.float64).to(dtype)
    if float(v) > t:
        v = torch.nextafter(v, torch.zeros((), dtype=dtype))
    return float(v)


class Thresholds(dict):
    """name -> threshold t, plus ``relative``: the names whose rule is |x| > t * mean|x| (per token).

    A plain dict (or a Thresholds with no relative names) means |x| > t everywhere, TEAL's rule.
    """

    def __init__(self, values: Mapping[str, float] | None = None, relative=()):
        super().__init__(values or {})
        self.relative = frozenset(relative)

    def copy(self) -> "Thresholds":
        return Thresholds(self, self.relative)

    @classmethod
    def of(cls, thresholds: Mapping[str, float] | None) -> "Thresholds":
        """A copy of any name -> t mapping (None: empty), keeping its relative names if it has them."""
        return cls(thresholds or {}, relative_names(thresholds))


def relative_names(thresholds) -> frozenset:
    """The names of ``thresholds`` under the relative rule (none for a plain dict)."""
    return frozenset(getattr(thresholds, "relative", ()))


def below(x: torch.Tensor, t: float, relative: bool = False) -> torch.Tensor:
    """The entries the masking rule drops (bool, x's shape); t <= 0 drops exact zeros only."""
    if t <= 0:
        return x == 0
    if relative:
        return x.abs().float() <= t * token_scale(x)
    return x.abs() <= floor_to(float(t), x.dtype)


def mask(x: torch.Tensor, t: float) -> torch.Tensor:
    """x with entries |x| <= t zeroed (a new tensor); t <= 0 leaves x as it is."""
    return x if t <= 0 else x.masked_fill(below(x, t), 0)


class Handle:
    """Hooks placed by ``apply_thresholds``; ``remove()`` (or leaving the ``with`` block) takes them off.

    With ``count=True`` (or a collection of names: count those only) it also counts, per linear, the
    input entries that were masked and the entries subject to masking (``achieved()``).
    """

    def __init__(self, thresholds: Mapping[str, float], prefill: str, count=False):
        self.thresholds = thresholds  # read at call time: callers may update it in place
        self.relative = relative_names(thresholds)
        self.prefill = check_prefill(prefill)
        self.count = count
        self._handles: list = []
        self._zeros: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}

    def _hook(self, name: str):
        counted = self.count is True or (bool(self.count) and name in self.count)

        def hook(_mod, args):
            x = args[0]
            t = float(self.thresholds.get(name, 0.0))
            tokens = x.shape[-2] if x.dim() >= 2 else 1
            if tokens == 1 or self.prefill == "all":
                start = 0
            elif self.prefill == "later_half":
                start = tokens // 2
            else:
                return None
            part = x if start == 0 else x[..., start:, :]
            if t <= 0:
                if counted:
                    self._add(name, (part == 0).sum(), part.numel())
                return None
            drop = below(part, t, name in self.relative)
            if counted:
                self._add(name, drop.sum(), part.numel())
            if start == 0:
                return (x.masked_fill(drop, 0),) + tuple(args[1:])
            out = x.clone()
            out[..., start:, :] = part.masked_fill(drop, 0)
            return (out,) + tuple(args[1:])

        return hook

    def _add(self, name: str, zeros: torch.Tensor, seen: int) -> None:
        self._zeros[name] = self._zeros.get(name, 0) + zeros
        self._seen[name] = self._seen.get(name, 0) + seen

    def attach(self, modules: Mapping[str, nn.Module]) -> "Handle":
        for name, mod in modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def achieved(self) -> dict[str, float]:
        """Fraction of masked input entries per linear (needs ``count=True``)."""
        return {n: float(z) / self._seen[n] for n, z in self._zeros.items() if self._seen[n]}

    def reset(self) -> None:
        self._zeros.clear()
        self._seen.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def modules_by_name(model: nn.Module, names) -> dict[str, nn.Module]:
    found = {}
    for name in names:
        try:
            mod = model.get_submodule(name)
        except AttributeError as exc:
            raise BadInput(f"the thresholds name a linear {name} that this model does not have; "
                           "they were made for a different model.") from exc
        if not isinstance(mod, nn.Linear):
            raise BadInput(f"{name} is not a linear layer in this model; the thresholds are for a different model.")
        found[name] = mod
    return found


def apply_thresholds(model: nn.Module, thresholds: Mapping[str, float], prefill: str = "all",
                     count: bool = False) -> Handle:
    """Mask the input of every linear named in ``thresholds`` (keep x where |x| > t, or
    |x| > t * mean|x| for the names in ``thresholds.relative``).

    Returns a handle; ``handle.remove()`` or ``with apply_thresholds(...):`` takes the hooks off.
    """
    handle = Handle(Thresholds.of(thresholds), prefill, count)
    return handle.attach(modules_by_name(model, thresholds))


@torch.no_grad()
def measure_sparsity(model: nn.Module, thresholds: Mapping[str, float], tokens: torch.Tensor,
                     seqlen: int | None = None, prefill: str = "all", max_windows: int | None = None) -> dict[str, float]:
    """Achieved activation sparsity per linear on ``tokens`` ([1, N] or [n, T]) with every threshold on.

    The text is cut into non-overlapping windows of ``seqlen`` tokens (default: the rows of
    ``tokens``), as for perplexity. Linears sharing an input site report the same value in uniform mode.
    """
    if seqlen:
        rows = tokens.reshape(-1)[: (tokens.numel() // seqlen) * seqlen].reshape(-1, seqlen)
    else:
        rows = tokens.reshape(-1, tokens.shape[-1])
    if max_windows is not None:
        rows = rows[:max_windows]
    if rows.shape[0] == 0:
        raise BadInput("the text is shorter than one window; no sparsity could be measured.")
    device = next(model.parameters()).device
    with apply_thresholds(model, thresholds, prefill=prefill, count=True) as handle:
        for row in rows:
            model(row.unsqueeze(0).to(device), use_cache=False)
        return handle.achieved()
