"""Load causal LMs and find their parts by role (the architecture adapter).

Supported: decoders with q/k/v/o attention projections and gate/up/down MLP projections, laid out
as ``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and ``.mlp.{gate,up,down}_proj`` — the
Llama, Mistral, Qwen2 and Qwen3 families.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsekit.errors import BadInput, Failure

DEMO_DIR = Path(__file__).parent / "demo"
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# role -> attribute path inside a decoder layer
ROLES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
# activation input sites: the linears that read the same input share one selection
SITES = {"attn": ("q", "k", "v"), "o": ("o",), "mlp": ("gate", "up"), "down": ("down",)}
SITE_OF_ROLE = {role: site for site, roles in SITES.items() for role in roles}


@dataclass(frozen=True)
class LinearRef:
    """One prunable linear: its full module name, decoder layer index and role."""

    name: str
    layer: int
    role: str
    module: nn.Linear


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device} asked for a GPU but torch sees no CUDA device.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present.")
    elif dev.type != "cpu":
        raise BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = getattr(dtype, "value", dtype) or "auto"
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in table:
        raise BadInput(f"--dtype must be auto, float16, bfloat16 or float32, got {name!r}.")
    return table[name]


def resolve_model_path(name: str) -> str:
    """'demo' -> the embedded model dir; an existing dir -> itself; else an HF hub id."""
    if name == "demo":
        if not (DEMO_DIR / "config.json").exists():
            raise Failure("the embedded demo model is missing from this installation (sparsekit/demo).")
        return str(DEMO_DIR)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BadInput(f"{name} is a directory but holds no config.json, so it is not a model.")
        return str(path)
    # hub ids look like "org/name"; anything path-like that is not there is a typo'd directory
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists():
        raise BadInput(f"model directory {name} does not exist.")
    return name


def load_config(name: str):
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise BadInput(f"could not load a model config for {name!r} (not a local dir, and the hub id could not be fetched: {str(exc).splitlines()[0]}).") from exc
    check_supported(config)
    return config


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise BadInput(
            f"architecture {model_type!r} is not supported; sparsekit handles {', '.join(SUPPORTED_TYPES)} "
            "(decoders with q/k/v/o and gate/up/down projections)."
        )


def load_model(name: str = "demo", device: str | torch.device = "cpu", dtype=None):
    """Load ``(model, tokenizer)``; the model is in eval mode on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sparsekit  # noqa: F401  (registers the HfQuantizer for converted dirs)

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    config = load_config(name)
    path = resolve_model_path(name)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise Failure(f"could not load model {name!r}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    model.to(dev)
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise BadInput(f"{type(model).__name__} has no model.layers; not a supported decoder.")
    return layers


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The seven projections of one decoder layer, by role."""
    found = {}
    for role, path in ROLES.items():
        mod = layer
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                raise BadInput(f"decoder layer has no {path}; not a supported architecture.")
        found[role] = mod
    return found


def linear_refs(model: nn.Module) -> list[LinearRef]:
    """Every prunable linear of the decoder layers (never embeddings or lm_head), in layer order."""
    refs = []
    for i, layer in enumerate(decoder_layers(model)):
        for role, mod in layer_linears(layer).items():
            refs.append(LinearRef(f"model.layers.{i}.{ROLES[role]}", i, role, mod))
    return refs


def max_seqlen(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def default_seqlen(model_or_config, requested: int | None = None) -> int:
    limit = max_seqlen(model_or_config)
    if requested is None:
        return min(2048, limit)
    if requested > limit:
        raise BadInput(f"--seqlen {requested} exceeds the model's maximum of {limit} positions.")
    return requested


def signature(model_or_config) -> dict:
    """What must match between a model and artifacts made from it (calibrations, caches)."""
    c = getattr(model_or_config, "config", model_or_config)
    return {
        "model_type": c.model_type,
        "num_hidden_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": getattr(c, "num_key_value_heads", c.num_attention_heads),
        "vocab_size": c.vocab_size,
    }
