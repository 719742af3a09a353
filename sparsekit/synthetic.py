"""Synthetic models: real architectures with random weights, built directly on the device.

``synthetic:NAME`` answers speed questions without downloading weights. Weight sparsity is applied
with random masks (exactly ``round(s1 * K)`` zeros in every row, like Wanda's unstructured
per-row masks; ``2:4`` masks for the 2:4 format; N:M or N:M-out masks when asked) and activation thresholds are calibrated on random
token inputs so that each input site drops a fraction ``s2`` of its channels. Quality of such a
model is meaningless; only its speed is.
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekit.errors import BadInput

PREFIX = "synthetic:"
QUALITY_WARNING = "synthetic model: random weights, so quality (perplexity, generated text) is meaningless; only timings are."

# name -> (model_type, hidden, intermediate, layers, heads, kv heads, vocab, extra config)
SHAPES: dict[str, tuple] = {
    "llama-2-7b": ("llama", 4096, 11008, 32, 32, 32, 32000, dict(max_position_embeddings=4096)),
    "llama-3-8b": ("llama", 4096, 14336, 32, 32, 8, 128256, dict(max_position_embeddings=8192, rope_theta=500000.0)),
    "llama-2-13b": ("llama", 5120, 13824, 40, 40, 40, 32000, dict(max_position_embeddings=4096)),
    "mistral-7b": ("mistral", 4096, 14336, 32, 32, 8, 32000, dict(max_position_embeddings=32768, sliding_window=None,
                                                               rope_theta=1000000.0)),
    "tiny": ("llama", 256, 704, 2, 4, 2, 512, dict(max_position_embeddings=2048)),
}
FORMATS = ("dense", "teal", "spdp", "spinfer", "bitmask", "2:4")


def is_synthetic(name: str) -> bool:
    return name.startswith(PREFIX)


def synthetic_name(name: str) -> str:
    key = name[len(PREFIX):]
    if key not in SHAPES:
        raise BadInput(f"unknown synthetic model {key!r}; choose one of {', '.join(PREFIX + k for k in SHAPES)}.")
    return key


def config_for(name: str):
    """The transformers config of ``synthetic:NAME`` (or of a bare NAME)."""
    from transformers import AutoConfig

    key = synthetic_name(name if is_synthetic(name) else PREFIX + name)
    model_type, hidden, inter, layers, heads, kv, vocab, extra = SHAPES[key]
    return AutoConfig.for_model(
        model_type, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False,
        **extra,
    )


def build(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0, attn: str = "sdpa") -> nn.Module:
    """Random-weight model of ``synthetic:NAME`` constructed on ``device`` (never on the CPU first)."""
    from transformers import AutoModelForCausalLM

    config = config_for(name)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@torch.no_grad()
def prune_random_(weight: torch.Tensor, sparsity: float, gen: torch.Generator, structure: str = "unstructured",
                  chunk_rows: int = 2048) -> None:
    """Zero a random ``sparsity`` fraction of every row in place; with an N:M ``structure`` (such as
    "2:4") N random weights of every M consecutive ones along a row, with N:M-out ("2:4-out") N
    random rows of every M consecutive rows (from row 0) of each column. ``sparsity`` must then be
    N/M (or 0).

    Weights that are zero already are among the zeros, so pruning 0.5 then 0.6 gives a 0.6 mask
    that contains the 0.5 one (rows, or groups, with more zeros than asked keep them)."""
    from sparsekit.pruning.masks import axis_of, parse_structure, structure_label

    n, k = weight.shape
    nm = parse_structure(structure)
    if nm is not None:
        z, m = nm
        if sparsity and abs(sparsity - z / m) > 1e-9:
            raise BadInput(f"--structure {structure_label(nm)} zeroes {z} of every {m} weights, so the weight "
                           f"sparsity must be {z / m:g}, got {sparsity:g}.")
        if axis_of(nm) == "out":
            if n % m:
                raise BadInput(f"{structure_label(nm)} sparsity needs output sizes divisible by {m}, got {n}.")
            step = max(m, chunk_rows // m * m)
            for r0 in range(0, n, step):
                rows = weight[r0:r0 + step]
                groups = rows.view(-1, m, k)  # [groups, m rows, k]
                scores = torch.rand(groups.shape, generator=gen, device=weight.device)
                scores.masked_fill_(groups == 0, -1.0)
                drop = scores.topk(z, dim=1, largest=False).indices
                groups.scatter_(1, drop, 0)
            return
        if k % m:
            raise BadInput(f"{structure_label(nm)} sparsity needs input sizes divisible by {m}, got {k}.")
        for r0 in range(0, n, chunk_rows):
            rows = weight[r0:r0 + chunk_rows].view(-1, k // m, m)
            scores = torch.rand(rows.shape, generator=gen, device=weight.device)
            scores.masked_fill_(rows == 0, -1.0)
            drop = scores.topk(z, dim=-1, largest=False).indices
            rows.scatter_(-1, drop, 0)
        return
    zeros = int(round(sparsity * k))
    if zeros == 0:
        return
    for r0 in range(0, n, chunk_rows):
        rows = weight[r0:r0 + chunk_rows]
        scores = torch.rand(rows.shape, generator=gen, device=weight.device)
        scores.masked_fill_(rows == 0, -1.0)  # zeros already there count first: pruning further keeps them
        drop = scores.topk(zeros, dim=1, largest=False).indices
        rows.scatter_(1, drop, 0)


def apply_weight_sparsity(model: nn.Module, sparsity: float, seed: int = 0, structure: str = "unstructured") -> int:
    """Random masks (``structure``: unstructured per row, N:M or N:M-out, see ``prune_random_``) on
    every decoder linear; returns the number of weights zeroed."""
    from sparsekit.models import linear_refs

    gen = _generator(next(model.parameters()).device, seed + 1)
    before = 0
    after = 0
    for ref in linear_refs(model):
        w = ref.module.weight.data
        before += int((w == 0).sum())
        prune_random_(w, sparsity, gen, structure)
        after += int((w == 0).sum())
    return after - before


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, sparsity: float, seed: int = 0, tokens: int = 128,
                         max_samples: int = 1 << 20, rule: str = "relative"):
    """Per-linear thresholds so that each input site drops a ``sparsity`` fraction of |x| on random tokens.

    Linears that share an input (q/k/v; gate/up) get the same threshold. Keys are the full module
    names, the form ``sparsekit.runtime.patch.convert_model`` takes. With ``rule="relative"`` (what
    ``sparsekit calibrate`` records by default) the o sites get relative thresholds, so a
    benchmark runs the same masking a calibrated model does. Returns a ``Thresholds``.
    """
    from sparsekit.activation.sparsify import Thresholds
    from sparsekit.activation.thresholds import relative_sites
    from sparsekit.kernels.reference import relative_magnitude
    from sparsekit.models import SITES, decoder_layers, layer_linears, ROLES

    if not 0 <= sparsity < 1:
        raise BadInput(f"activation sparsity must be in [0, 1), got {sparsity}.")
    relative = relative_sites(rule)
    device = next(model.parameters()).device
    gen = _generator(device, seed + 2)
    site_inputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        linears = layer_linears(layer)
        for site, roles in SITES.items():
            def hook(_mod, args, i=i, site=site):
                x = args[0].detach()
                site_inputs[(i, site)] = (relative_magnitude(x) if site in relative else x).reshape(-1)
            handles.append(linears[roles[0]].register_forward_pre_hook(hook))
    try:
        ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=gen, device=device)
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    thresholds = Thresholds(relative={f"model.layers.{i}.{ROLES[r]}" for i in range(len(decoder_layers(model)))
                                      for site in relative for r in SITES[site]})
    for (i, site), x in site_inputs.items():
        mags = x.abs().float()
        if mags.numel() > max_samples:
            pick = torch.randint(0, mags.numel(), (max_samples,), generator=gen, device=device)
            mags = mags[pick]
        t = float(torch.quantile(mags, sparsity)) if sparsity > 0 else 0.0
        for role in SITES[site]:
            thresholds[f"model.layers.{i}.{ROLES[role]}"] = t
    return thresholds


def check_format(fmt: str, weight_sparsity: float, activation_sparsity: float, structure: str = "unstructured") -> float:
    """Validate the synthetic sparsity settings; returns the weight sparsity to apply.

    ``structure`` is the random weight mask's: unstructured, N:M or N:M-out. With N:M or N:M-out
    the weight sparsity is N/M (a given ``weight_sparsity`` must be 0 or N/M); ``--format 2:4``
    always means 2:4 masks at 0.5 (``structure`` unstructured or 2:4)."""
    from sparsekit.errors import check_fraction
    from sparsekit.pruning.masks import NM, parse_structure

    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    check_fraction("--weight-sparsity", weight_sparsity)
    check_fraction("--activation-sparsity", activation_sparsity)
    nm = parse_structure(structure)
    if fmt == "2:4":
        if nm is not None and nm != NM(2, 4):
            raise BadInput(f"--format 2:4 stores 2 of every 4 inputs of a row, so --structure must be unstructured "
                           f"or 2:4, got {structure!r}.")
        if weight_sparsity not in (0.0, 0.5):
            raise BadInput(f"--format 2:4 means 50% weight sparsity, got --weight-sparsity {weight_sparsity}.")
        return 0.5
    if nm is not None:
        n, m = nm
        if weight_sparsity and abs(weight_sparsity - n / m) > 1e-9:
            raise BadInput(f"--structure {nm.label} zeroes {n} of every {m} weights, so --weight-sparsity must be "
                           f"{n / m:g} (or omitted), got {weight_sparsity:g}.")
        return n / m
    return weight_sparsity


def mask_structure(fmt: str, structure: str = "unstructured") -> str:
    """The structure of the random weight masks, as ``--structure`` spells it: "2:4" for the 2:4
    format, else ``structure`` normalised ("unstructured", "4:8", "2:4-out", ...)."""
    from sparsekit.pruning.masks import parse_structure, structure_label

    return "2:4" if fmt == "2:4" else structure_label(parse_structure(structure))
