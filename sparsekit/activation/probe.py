"""Run one decoder layer on a few calibration samples with thresholds on (while it is on the device).

Two jobs of ``calibrate_model``:

- ``corrections``: for each level g, the layer runs on the subset's hidden states as they arrive
  when every earlier layer runs at level g; at each input site, in forward order, the in-use
  input's histogram gives the threshold that makes it g-sparse, the site is masked with it, and the
  threshold is stored as a quantile of the dense histogram (``thresholds.py`` explains why). The
  layer's outputs per level feed the next layer's call.
- ``LayerProbe``: the greedy objective, the layer's relative output error ``|y - y_dense|^2 /
  |y_dense|^2`` at an allocation, recomputing only what a step changed: a step of down reruns
  down_proj alone, gate/up the MLP, o the o_proj and the MLP, q/k/v the whole layer. The cached
  pieces (attention output, o and down inputs) are swapped in by temporarily replacing
  ``self_attn.forward`` / ``mlp.forward`` on the instance, so the decoder layer's own code (norms,
  residuals) still runs. A self-check at the start falls back to whole-layer forwards if the
  layer does not compose that way. A pending candidate keeps the pieces it recomputed (on a
  7B layer with 4096 tokens in fp16, at most ~0.2 GB each, 7 candidates).
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekit.activation.histograms import Accumulator, Quantiles
from sparsekit.activation.sparsify import Handle, Thresholds, below, floor_to
from sparsekit.kernels.reference import relative_magnitude
from sparsekit.models import SITES

ATTN_ROLES = ("q", "k", "v")
MLP_ROLES = ("gate", "up")


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def relative_roles(relative_sites) -> frozenset[str]:
    return frozenset(r for site in relative_sites for r in SITES[site])


@torch.no_grad()
def corrections(layer: nn.Module, lin: dict[str, nn.Linear], states: list[torch.Tensor], kwargs: dict,
                full: Quantiles, subset: Quantiles, site_index: dict[str, int], levels, relative_sites=()
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the layer once per level g on that level's hidden states, every site made g-sparse in use.

    ``states[j]``: the subset's hidden states entering this layer with every earlier layer at level
    ``levels[j]``. At each input site (in forward order) the in-use input's histogram gives the
    threshold for sparsity g, which is stored as a quantile of the *dense* histogram of the same
    samples (``subset``, rows by ``site_index``) and applied through the all-sample dense histogram
    ``full``. Returns ``[sites, len(levels)]`` of those quantiles and the layer's outputs per level.
    The histograms of ``relative_sites`` hold |x| / mean|x| and their linears mask by that rule.
    """
    out = torch.tensor(levels, dtype=torch.float64).repeat(len(site_index), 1)
    thr = Thresholds(relative=relative_roles(relative_sites))
    done: set[str] = set()
    level = {}

    def in_use(site: str):
        def hook(_mod, args):
            if site in done:
                return None
            done.add(site)
            acc = Accumulator(1, args[0].device)
            acc.add(0, relative_magnitude(args[0]) if site in relative_sites else args[0])
            c, st = acc.result()
            k = site_index[site]
            t_use = float(Quantiles.of(c, st).thresholds(level["g"])[0])
            s_eq = float(subset.sparsity_at(t_use)[k])
            out[k, level["j"]] = s_eq
            t = float(full.thresholds(torch.full((full.cum.shape[0],), s_eq, dtype=torch.float64))[k])
            thr.update({r: t for r in SITES[site]})
            return None

        return hook

    taps = [lin[r].register_forward_pre_hook(in_use(site), prepend=True) for site in site_index for r in SITES[site]]
    handle = Handle(thr, "all", count=False).attach(lin)  # masks with the thresholds the taps set
    nxt = []
    try:
        for j, g in enumerate(levels):
            thr.clear()
            done.clear()
            level.update(g=g, j=j)
            nxt.append(_hidden(layer(states[j], **kwargs)))
    finally:
        handle.remove()
        for h in taps:
            h.remove()
    return out, nxt


class LayerProbe:
    """The greedy objective on one layer; ``thresholds`` (role -> t) is read at every call."""

    @torch.no_grad()
    def __init__(self, layer: nn.Module, lin: dict[str, nn.Linear], x: torch.Tensor, kwargs: dict,
                 relative_sites=()):
        if "attn" in relative_sites:
            raise ValueError("the probe measures the q/k/v input with the absolute rule")
        self.layer, self.lin, self.x, self.kwargs = layer, lin, x, kwargs
        self.thresholds = Thresholds(relative=relative_roles(relative_sites))
        # q/k/v read the layer's (fixed) input: their achieved sparsity is a function of t, memoised
        self.handle = Handle(self.thresholds, "all", count=("o",) + MLP_ROLES + ("down",)).attach(lin)
        self._memo: dict[float, float] = {}
        self._taps: dict[str, torch.Tensor] = {}
        self._tap_handles = [
            lin["q"].register_forward_pre_hook(self._tap("attn_in"), prepend=True),
            lin["o"].register_forward_pre_hook(self._tap("o_in"), prepend=True),
            lin["down"].register_forward_pre_hook(self._tap("down_in"), prepend=True),
            layer.self_attn.register_forward_hook(lambda _m, _a, out: self._taps.__setitem__("attn_out", _hidden(out))),
        ]
        self.state: dict = {}
        self.achieved: dict[str, float] = {}
        y, self.state, self.achieved = self._run(None)
        self.dense = y.float()
        self.norm = float(self.dense.pow(2).sum()) or 1.0
        self.partial = self._check_partial()

    def _tap(self, key: str):
        def hook(_mod, args):
            self._taps[key] = args[0]

        return hook

    def _run(self, changed: str | None):
        """Forward at the current thresholds; ``changed`` says what differs from ``self.state``."""
        sa, mlp = self.layer.self_attn, self.layer.mlp
        patched = []
        if changed is not None and changed not in ATTN_ROLES:
            if changed == "o":
                sa.forward = lambda *a, **k: (sa.o_proj(self.state["o_in"]), None)
            else:
                sa.forward = lambda *a, **k: (self.state["attn_out"], None)
            patched.append(sa)
            if changed == "down":
                mlp.forward = lambda *a, **k: mlp.down_proj(self.state["down_in"])
                patched.append(mlp)
        self._taps = {}
        self.handle.reset()
        try:
            y = _hidden(self.layer(self.x, **self.kwargs))
        finally:
            for mod in patched:
                del mod.forward
        state = {**self.state, **self._taps}
        achieved = {**self.achieved, **self.handle.achieved(), **self._attn_achieved(state)}
        return y, state, achieved

    def _attn_achieved(self, state: dict) -> dict[str, float]:
        x = state.get("attn_in")
        if x is None:
            return {}
        out = {}
        for r in ATTN_ROLES:
            t = floor_to(float(self.thresholds.get(r, 0.0)), x.dtype)
            if t not in self._memo:
                self._memo[t] = float(below(x, t).float().mean())
            out[r] = self._memo[t]
        return out

    def _check_partial(self) -> bool:
        try:
            ok = all(torch.allclose(self._run(role)[0].float(), self.dense, rtol=1e-4, atol=1e-5)
                     for role in ("o", "up", "down"))
        except Exception:  # an architecture that does not compose like Llama: whole-layer forwards
            ok = False
        return ok

    @torch.no_grad()
    def error(self, alloc_thresholds: dict[str, float], changed: str | None):
        """(relative output error, achieved sparsity per role, state to adopt if this step is taken)."""
        self.thresholds.clear()
        self.thresholds.update(alloc_thresholds)
        y, state, achieved = self._run(changed if self.partial else None)
        err = float((y.float() - self.dense).pow(2).sum()) / self.norm
        return err, achieved, (state, achieved)

    def accept(self, token) -> None:
        self.state, self.achieved = token

    def close(self) -> None:
        self.handle.remove()
        for h in self._tap_handles:
            h.remove()
