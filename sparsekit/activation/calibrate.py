"""``calibrate_model``: record a Calibration with the shared layer-by-layer engine.

``run_layerwise`` brings one decoder layer at a time to the device and runs every calibration
sample through it; the visitor here never changes the layer (returns False). While layer i is on
the device it

1. records the dense histogram of |x| at the four input sites (forward-pre hooks on q, o, gate,
   down; q/k/v and gate/up share their input; with the relative rule the o histograms hold
   |x| / mean|x| per token, ``thresholds.py``), and keeps the inputs of the first few samples
   (the *subset*) plus the dense o/down histograms of the subset;
2. measures the in-use correction of every site on the subset (``probe.corrections``), carrying
   the subset's hidden states through the layers once per level (every earlier layer sparsified
   at that level);
3. with ``greedy``, runs the greedy allocation (``greedy.py``) with the layer's relative output
   error on the subset as the objective (``probe.LayerProbe``).

Peak device memory: the engine's (one layer + 2 x samples x seqlen x hidden in the model dtype)
plus (levels + 1) x subset x seqlen x hidden for the per-level hidden states, and one layer's
activations on the subset.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import nn

from sparsekit.activation import greedy as greedy_mod
from sparsekit.activation.histograms import NBINS, STATS, Accumulator, Quantiles
from sparsekit.activation.probe import LayerProbe, corrections
from sparsekit.activation.thresholds import LEVELS, SITE_INDEX, SITE_NAMES, Calibration, relative_sites
from sparsekit.kernels.reference import relative_magnitude
from sparsekit.models import ROLES, SITE_OF_ROLE, SITES, decoder_layers, layer_linears, linear_refs, signature
from sparsekit.pruning.sequential import input_hooks, run_layerwise

# calibration tokens per layer for the in-use correction: with 2048 (4 windows of 512) the held-out
# o sites of the demo model missed ±0.01 for one of three draws at S2 = 0.6; 8192 kept all within
# ±0.009 (benchmarks/NOTES.md, "Fifth session"). It costs ~4x the correction phase's time.
CORRECTION_TOKENS = 8192


class _Capture:
    """Keeps the inputs (and kwargs) of a layer's first ``n`` forward calls."""

    def __init__(self, layer: nn.Module, n: int):
        self.n = n
        self.inputs: list[torch.Tensor] = []
        self.kwargs: dict = {}
        self.current = -1  # index of the call in progress
        self._handle = layer.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, _mod, args, kwargs):
        self.current += 1
        if len(self.inputs) < self.n:
            self.inputs.append(args[0] if args else kwargs["hidden_states"])
            if not self.kwargs:
                self.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    def batch(self, n: int) -> torch.Tensor:
        return torch.cat(self.inputs[:n], 0)

    def remove(self) -> None:
        self._handle.remove()


def _greedy_layer(layer: nn.Module, lin: dict[str, nn.Linear], x: torch.Tensor, kwargs: dict, full: Quantiles,
                  params: dict[str, int], settings: greedy_mod.GreedySettings, relative=()) -> tuple[torch.Tensor, int]:
    probe = LayerProbe(layer, lin, x, kwargs, relative)
    cache: dict[float, torch.Tensor] = {}

    def error(alloc: dict[str, float], changed: str | None):
        thr = {}
        for role, s in alloc.items():
            if s not in cache:
                cache[s] = full.thresholds(s)
            thr[role] = float(cache[s][SITE_INDEX[SITE_OF_ROLE[role]]])
        return probe.error(thr, changed)

    try:
        return greedy_mod.allocate(params, error, settings, accept=probe.accept)
    finally:
        probe.close()


@torch.no_grad()
def calibrate_model(model: nn.Module, samples: torch.Tensor, *, device: torch.device, greedy: bool = False,
                    progress=None, settings: greedy_mod.GreedySettings | None = None,
                    correction_tokens: int = CORRECTION_TOKENS, levels=LEVELS, rule: str = "relative") -> Calibration:
    """Histograms of every linear input site, the in-use correction (and the greedy tables).

    ``rule``: "relative" (the o sites record |x| / mean|x|) or "absolute" (|x| everywhere).
    """
    relative = relative_sites(rule)
    settings = settings or greedy_mod.GreedySettings()
    if settings.tokens is None:
        settings = dataclasses.replace(settings, tokens=4096 if device.type == "cuda" else 1024)
    layers = decoder_layers(model)
    names = [{} for _ in layers]
    for ref in linear_refs(model):
        names[ref.layer][ref.role] = ref.name
    first = layer_linears(layers[0])
    params = {r: int(first[r].weight.numel()) for r in ROLES}
    n_layers, n_sites = len(layers), len(SITE_NAMES)
    counts = torch.zeros(n_layers, n_sites, NBINS, dtype=torch.int64)
    stats = torch.zeros(n_layers, n_sites, len(STATS), dtype=torch.float64)
    compound = torch.zeros(n_layers, n_sites, len(levels), dtype=torch.float64)
    tables: list[torch.Tensor] = [torch.empty(0)] * n_layers
    evals = [0] * n_layers
    n, seqlen = int(samples.shape[0]), int(samples.shape[-1])
    n_corr = max(1, min(n, math.ceil(correction_tokens / seqlen)))
    n_greedy = max(1, min(n, math.ceil(settings.tokens / seqlen)))
    states: list[torch.Tensor] = []  # per level: the subset's hidden states with earlier layers at that level
    phases = {"histograms": 0.0, "correction": 0.0, "greedy": 0.0}
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:  # phase timing (synchronised, so GPU work is charged to its phase)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        phases[phase] += now - clock[0]
        clock[0] = now

    def visit(i: int, layer: nn.Module, forward) -> bool:
        lin = layer_linears(layer)
        acc = Accumulator(2 * n_sites, device)  # 4 sites on every sample, then the 4 on the subset
        cap = _Capture(layer, max(n_corr, n_greedy if greedy else 0))

        def record(site: str, x: torch.Tensor) -> None:
            if site in relative:
                x = relative_magnitude(x)
            acc.add(SITE_INDEX[site], x)
            if cap.current < n_corr:
                acc.add(n_sites + SITE_INDEX[site], x)

        handles = input_hooks({site: lin[roles[0]] for site, roles in SITES.items()}, record)
        lap("histograms")  # (the engine's moving of the layer and its inputs counts as histograms)
        try:
            forward()
        finally:
            for h in handles:
                h.remove()
            cap.remove()
        c, st = acc.result()
        counts[i], stats[i] = c[:n_sites].to(torch.int64), st[:n_sites]
        full = Quantiles.of(c[:n_sites], st[:n_sites])
        subset = Quantiles.of(c[n_sites:], st[n_sites:])
        lap("histograms")
        if i == 0:
            states[:] = [cap.batch(n_corr)] * len(levels)
        compound[i], states[:] = corrections(layer, lin, states, cap.kwargs, full, subset, SITE_INDEX, levels, relative)
        lap("correction")
        if greedy:
            tables[i], evals[i] = _greedy_layer(layer, lin, cap.batch(n_greedy), cap.kwargs, full, params, settings,
                                                relative)
            lap("greedy")
        return False

    t0 = clock[0] = time.perf_counter()
    run = run_layerwise(model, samples, device, visit, progress)
    seconds = time.perf_counter() - t0
    phases["histograms"] += seconds - sum(phases.values())  # the rest: input capture, moving layers
    info = {"nsamples": n, "seqlen": seqlen, "seconds": round(seconds, 3),
            "peak_device_bytes": run.get("peak_device_bytes"), "device": str(device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "correction": {"levels": list(levels), "samples": n_corr},
            "phases": {k: round(v, 3) for k, v in phases.items() if k != "greedy" or greedy}}
    if greedy:
        info["greedy"] = settings.as_dict() | {"samples": n_greedy, "evaluations": evals}
    return Calibration(signature=signature(model), names=names, counts=counts, stats=stats, params=params,
                       compound=compound, levels=tuple(levels), greedy=tables if greedy else None, info=info,
                       rule=rule)
