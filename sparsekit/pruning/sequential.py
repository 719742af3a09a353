"""The layer-by-layer calibration engine, shared by pruning and activation calibration.

Only one decoder layer and the calibration activations live on the compute device at a time; the
rest of the model stays where it was loaded (normally the CPU). For each layer i:

1. ``visit(i, layer, forward)``: the caller registers hooks on the layer's linears and calls
   ``forward()`` (runs every calibration sample through the dense layer), then may change the
   layer (prune it) and returns whether it did;
2. if the layer changed, the samples are run through it again, so layer i+1 is calibrated on
   the outputs of the already-processed layer i (as in SparseGPT and Wanda).

Peak device memory = one decoder layer + 2 x (nsamples x seqlen x hidden) activations in the
model dtype + whatever the visitor keeps (e.g. SparseGPT's Hessians, 4 * in_features^2 bytes
per linear being pruned).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sparsekit.models import decoder_layers


class _Caught(Exception):
    pass


class _Catcher(nn.Module):
    def __init__(self, layer: nn.Module, store: list):
        super().__init__()
        self.layer = layer
        self.store = store

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((hidden_states, kwargs))
        raise _Caught


def _first_device_modules(model: nn.Module) -> list[nn.Module]:
    inner = model.model
    mods = [inner.embed_tokens]
    for name in ("rotary_emb", "norm"):
        if getattr(inner, name, None) is not None:
            mods.append(getattr(inner, name))
    return mods


@torch.no_grad()
def capture_inputs(model: nn.Module, samples: torch.Tensor, device: torch.device):
    """Inputs of decoder layer 0 for every sample: (tensor [n, seqlen, hidden], layer kwargs)."""
    layers = decoder_layers(model)
    homes = [(m, next(m.parameters(), torch.empty(0)).device) for m in _first_device_modules(model)]
    for m, _ in homes:
        m.to(device)
    store: list = []
    first = layers[0]
    layers[0] = _Catcher(first, store)
    try:
        for s in samples:
            try:
                model(s.unsqueeze(0).to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        layers[0] = first
        for m, home in homes:
            if home.type != "meta":
                m.to(home)
    inps = torch.cat([h for h, _ in store], dim=0)
    kwargs = {k: v for k, v in store[0][1].items() if k not in ("past_key_value", "past_key_values", "use_cache")}
    return inps, kwargs


def _as_hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


Visitor = Callable[[int, nn.Module, Callable[[], None]], bool]


@torch.no_grad()
def run_layerwise(model: nn.Module, samples: torch.Tensor, device: torch.device, visit: Visitor,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Walk the decoder layers in order; see the module docstring. Returns memory/timing stats."""
    if device.type == "cuda":
        torch.cuda.init()  # reset_peak_memory_stats fails in a fresh process otherwise
        torch.cuda.reset_peak_memory_stats(device)
    inps, kwargs = capture_inputs(model, samples, device)
    outs = torch.empty_like(inps)
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        home = next(layer.parameters()).device
        layer.to(device)

        def forward(layer=layer):
            for j in range(inps.shape[0]):
                outs[j : j + 1] = _as_hidden(layer(inps[j : j + 1], **kwargs))

        changed = visit(i, layer, forward)
        if changed:
            forward()
        layer.to(home)
        inps, outs = outs, inps
        if progress is not None:
            progress(i + 1, len(layers))
    stats = {"peak_device_bytes": None}
    if device.type == "cuda":
        stats["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return stats


def input_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> list:
    """Register forward-pre hooks calling ``fn(name, input_2d)``; returns handles to remove."""
    handles = []
    for name, mod in modules.items():
        def hook(_mod, args, name=name):
            x = args[0]
            fn(name, x.reshape(-1, x.shape[-1]))
        handles.append(mod.register_forward_pre_hook(hook))
    return handles
