"""Prune a loaded model in place, layer by layer (``prune_model``), and what it achieved.

Wanda and SparseGPT walk the decoder layers with ``sequential.run_layerwise``: the inputs of layer
i are captured, statistics for all of its linears are collected from the dense layer (one
accumulator per input site: q/k/v share one, gate/up share one), the linears are pruned, and the
pruned layer produces the inputs of layer i+1. Magnitude needs no data: each layer visits the
device on its own. Only one decoder layer (plus the calibration activations) is on the compute
device at a time; embeddings and ``lm_head`` are never pruned.
"""
from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from sparsekit.errors import BadInput
from sparsekit.models import ROLES, SITES, decoder_layers, layer_linears, linear_refs, resolve_device
from sparsekit.pruning.magnitude import magnitude_mask
from sparsekit.pruning.masks import axis_of, check_settings, structure_label
from sparsekit.pruning.sequential import input_hooks, run_layerwise
from sparsekit.pruning.sparsegpt import BLOCKSIZE, Hessian, sparsegpt_prune
from sparsekit.pruning.wanda import InputNorms, wanda_mask

Progress = Callable[[int, int], None]


@dataclass
class PruneReport:
    """Achieved sparsity (fraction of exact zeros) and cost of one ``prune_model`` call.

    ``per_linear``: every decoder linear (ignored ones included) by HF module name;
    ``per_layer``: zeros / weights over the seven linears of each decoder layer;
    ``overall``: zeros / weights over all decoder linears (embeddings and lm_head excluded);
    ``peak_device_bytes``: ``torch.cuda.max_memory_allocated`` during pruning (None on CPU).
    """

    method: str
    sparsity: float
    structure: str
    per_linear: dict[str, float] = field(default_factory=dict)
    per_layer: list[float] = field(default_factory=list)
    overall: float = 0.0
    peak_device_bytes: int | None = None
    seconds: float = 0.0
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


NEVER_PRUNED = ("lm_head", "model.embed_tokens")


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def ignored_names(model: nn.Module, patterns) -> set[str]:
    """Linear names matching any pattern: a glob on the full name (``*.mlp.down_proj``,
    ``model.layers.0.*``) or ``re:REGEX`` (full match). A pattern that matches no decoder linear
    is a BadInput (likely a typo), unless it names lm_head / the embeddings (never pruned anyway)."""
    names = [r.name for r in linear_refs(model)]
    out: set[str] = set()
    for pat in patterns or ():
        try:
            hits = [n for n in names if _matches(n, pat)]
        except re.error as exc:
            raise BadInput(f"--ignore {pat!r} is not a valid regular expression ({exc}).") from exc
        if not hits and not any(_matches(n, pat) for n in NEVER_PRUNED):
            raise BadInput(f"--ignore {pat!r} matches no linear layer; names look like {names[0]} "
                           "(glob patterns such as '*.down_proj', or 're:REGEX').")
        out.update(hits)
    return out


def check_shapes(model: nn.Module, method: str, nm, skip: set[str]) -> None:
    """BadInput unless every linear to prune can take the N:M structure (and SparseGPT's blocks),
    or the N:M-out structure (out_features divisible by M; any M works with SparseGPT)."""
    if nm is None:
        return
    n, m = nm
    if axis_of(nm) == "out":
        for ref in linear_refs(model):
            if ref.name not in skip and ref.module.out_features % m:
                raise BadInput(f"{n}:{m}-out pruning needs out_features divisible by {m}, but {ref.name} has "
                               f"{ref.module.out_features}.")
        return
    if method == "sparsegpt" and BLOCKSIZE % m:
        raise BadInput(f"SparseGPT works in blocks of {BLOCKSIZE} columns, so M in N:M must divide {BLOCKSIZE}, got {n}:{m}.")
    for ref in linear_refs(model):
        if ref.name not in skip and ref.module.in_features % m:
            raise BadInput(f"{n}:{m} pruning needs in_features divisible by {m}, but {ref.name} has {ref.module.in_features}.")


Group = list[tuple[str, nn.Linear]]  # the linears of one input site that are pruned, by name


def _sites(i: int, layer: nn.Module, skip: set[str]) -> dict[str, Group]:
    """Input site -> the linears of layer ``i`` reading that input that are to be pruned."""
    linears = layer_linears(layer)
    groups = {}
    for site, roles in SITES.items():
        group = [(f"model.layers.{i}.{ROLES[r]}", linears[r]) for r in roles]
        group = [(n, m) for n, m in group if n not in skip]
        if group:
            groups[site] = group
    return groups


def _count_zeros(i: int, layer: nn.Module, counts: dict[str, tuple[int, int]]) -> None:
    for role, mod in layer_linears(layer).items():
        counts[f"model.layers.{i}.{ROLES[role]}"] = (int((mod.weight == 0).sum()), mod.weight.numel())


@torch.no_grad()
def _prune_site(method: str, group: Group, stat, sparsity: float, nm) -> None:
    """Prune the linears of one input site in place from their site's statistics."""
    if method == "magnitude":
        for _, mod in group:
            mod.weight.masked_fill_(magnitude_mask(mod.weight, sparsity, nm), 0)
    elif method == "wanda":
        norms = stat.norms()
        for _, mod in group:
            mod.weight.masked_fill_(wanda_mask(mod.weight, norms, sparsity, nm), 0)
    else:  # sparsegpt: rows are independent, so the site's linears are one stacked matrix (N:M-out
        # couples rows only within a group of M; every linear's out_features is a multiple of M, so
        # no group spans two linears)
        W = torch.cat([mod.weight for _, mod in group], dim=0)
        pruned = sparsegpt_prune(W, stat.take(), sparsity, nm)
        del W
        start = 0
        for _, mod in group:
            rows = mod.weight.shape[0]
            mod.weight.copy_(pruned[start : start + rows])
            start += rows


@torch.no_grad()
def prune_model(model: nn.Module, samples: torch.Tensor | None, *, method: str, sparsity: float | None,
                structure: str = "unstructured", ignore=(), device: torch.device | str = "cpu",
                progress: Progress | None = None) -> PruneReport:
    """Prune ``model``'s decoder linears in place; ``samples`` ``[n, seqlen]`` token ids (unused by
    magnitude). ``sparsity`` may be None with an N:M or N:M-out ``structure`` (it is N/M). Everything is
    validated before any weight changes. ``progress(i, n)`` is called after each decoder layer."""
    method = getattr(method, "value", method)
    sparsity, nm = check_settings(method, sparsity, structure)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    skip = ignored_names(model, ignore)
    check_shapes(model, method, nm, skip)
    needs_data = method != "magnitude" and sparsity > 0
    if needs_data and (samples is None or samples.ndim != 2 or samples.shape[0] < 1):
        raise BadInput(f"{method} needs calibration samples as a [nsamples, seqlen] tensor of token ids.")
    layers = decoder_layers(model)
    counts: dict[str, tuple[int, int]] = {}
    report = PruneReport(method=method, sparsity=sparsity, structure=structure_label(nm),
                         ignored=sorted(skip))

    def visit(i: int, layer: nn.Module, forward: Callable[[], None]) -> bool:
        """Statistics of every site from the dense layer (one forward), then prune each site."""
        groups = _sites(i, layer, skip)
        if groups:
            dev = next(layer.parameters()).device
            make = InputNorms if method == "wanda" else Hessian
            stats = {site: make(group[0][1].in_features, dev) for site, group in groups.items()}
            handles = input_hooks({site: group[0][1] for site, group in groups.items()},
                                  lambda site, x: stats[site].add(x))
            try:
                forward()
            finally:
                for h in handles:
                    h.remove()
            for site, group in groups.items():  # attn, o, mlp, down: each Hessian is freed after use
                _prune_site(method, group, stats.pop(site), sparsity, nm)
        _count_zeros(i, layer, counts)
        return bool(groups)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if needs_data:
        report.peak_device_bytes = run_layerwise(model, samples, device, visit, progress).get("peak_device_bytes")
    else:  # magnitude (or sparsity 0): no data; each layer visits the device on its own
        for i, layer in enumerate(layers):
            groups = _sites(i, layer, skip) if sparsity > 0 else {}
            home = next(layer.parameters()).device
            if groups:
                layer.to(device)
                for group in groups.values():
                    _prune_site(method, group, None, sparsity, nm)
            _count_zeros(i, layer, counts)
            layer.to(home)
            if progress is not None:
                progress(i + 1, len(layers))
        if device.type == "cuda":
            report.peak_device_bytes = int(torch.cuda.max_memory_allocated(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report.seconds = time.perf_counter() - t0

    report.per_linear = {name: z / n for name, (z, n) in counts.items()}
    for i in range(len(layers)):
        zs = [counts[f"model.layers.{i}.{path}"] for path in ROLES.values()]
        report.per_layer.append(sum(z for z, _ in zs) / sum(n for _, n in zs))
    total_n = sum(n for _, n in counts.values())
    report.overall = sum(z for z, _ in counts.values()) / total_n if total_n else 0.0
    return report
