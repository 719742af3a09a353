#!/usr/bin/env python3
"""Time and peak device memory of `prune_model` on a Llama-2-7B-shaped model (random weights).

The model is built on the CPU in fp16 (13.5 GB of RAM for all 32 layers of 7B); calibration is
128 random-token sequences of 2048 tokens; every method runs with device=cuda, one decoder layer
on the GPU at a time. ``--layers N`` builds only the first N decoder layers and extrapolates the
time to all layers from the measured per-layer time (peak device memory does not depend on the
number of layers). ``--shape llama-2-70b`` checks the 70B peak-memory formula; with enough layers
(52 of 80 = 84 GiB of weights) the model is larger than an 80 GB GPU and is still pruned on it.

  python benchmarks/prune_7b.py --json prune_7b.json                   # 7B, all 32 layers, all methods
  python benchmarks/prune_7b.py --layers 8                              # 7B, time extrapolated from 8 layers
  python benchmarks/prune_7b.py --shape llama-2-70b --layers 2 --methods wanda,sparsegpt
  python benchmarks/prune_7b.py --shape llama-2-70b --layers 52 --methods wanda   # > 80 GB model (host RAM >= 100 GiB)

Prints one row per method: measured seconds for the layers built, seconds per layer,
extrapolated seconds for all layers, peak allocated / reserved device memory, the on-paper
estimate (sparsekit.pruning.memory.peak_estimate) and the achieved sparsity.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Llama-2-70B is not (yet) in sparsekit.synthetic.SHAPES; its shape, for the memory check
LLAMA2_70B = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                  num_hidden_layers=80, vocab_size=32000, max_position_embeddings=4096)


def shape_config(shape: str):
    from sparsekit.synthetic import config_for

    config = config_for("llama-2-7b" if shape == "llama-2-70b" else shape)  # the shared shape table
    if shape == "llama-2-70b":
        for key, value in LLAMA2_70B.items():
            setattr(config, key, value)
    return config


def build(shape: str, layers: int, dtype: torch.dtype):
    """The model of ``shape`` with ``layers`` decoder layers, on the CPU, without the slow
    per-weight init: memory comes from meta tensors + ``to_empty``, values from ``fill``."""
    from transformers import AutoModelForCausalLM

    config = shape_config(shape)
    config.num_hidden_layers = layers
    config.dtype = dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default)
    model.to_empty(device="cpu")
    rotary = type(model.model.rotary_emb)(config=config)  # non-persistent buffers: recompute
    model.model.rotary_emb = rotary
    fill(model, seed=0)
    return model.eval()


@torch.no_grad()
def fill(model, seed: int) -> None:
    """Random weights (std 0.02, norms 1) from one random buffer copied at random offsets: fast,
    and every row of every matrix is a different slice."""
    g = torch.Generator().manual_seed(seed)
    pool = (torch.randn(1 << 26, generator=g) * 0.02).to(next(model.parameters()).dtype)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
            continue
        flat = p.view(-1)
        pos = 0
        while pos < flat.numel():
            off = int(torch.randint(0, pool.numel() // 2, (1,), generator=g))
            take = min(flat.numel() - pos, pool.numel() - off)
            flat[pos : pos + take] = pool[off : off + take]
            pos += take


def add_model_args(ap: argparse.ArgumentParser, shape_help: str, layers_help: str, dtypes: list[str]) -> None:
    """The arguments every 7B-shaped timing script shares (prune_7b.py, calibrate_7b.py)."""
    ap.add_argument("--shape", default="llama-2-7b", help=shape_help)
    ap.add_argument("--layers", type=int, default=None, help=layers_help)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=dtypes)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, help="also write the results here")


def setup(args) -> tuple[torch.nn.Module, torch.dtype, torch.device, int, float]:
    """Build the model of ``args`` on the CPU: (model, dtype, device, layers of the full shape, seconds).
    Sets ``args.layers`` to all layers when not given."""
    dtype = getattr(torch, args.dtype)
    full_layers = shape_config(args.shape).num_hidden_layers
    args.layers = args.layers or full_layers
    t0 = time.perf_counter()
    model = build(args.shape, args.layers, dtype)
    return model, dtype, torch.device(args.device), full_layers, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, "a sparsekit.synthetic shape (llama-2-7b, llama-2-13b, ...) or llama-2-70b",
                   "decoder layers to build and prune [default: all]; time is extrapolated to all",
                   ["float16", "bfloat16"])
    ap.add_argument("--methods", default="wanda,sparsegpt,magnitude")
    ap.add_argument("--structure", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()

    from sparsekit.env import environment
    from sparsekit.pruning import prune_model
    from sparsekit.pruning.memory import peak_estimate

    model, dtype, device, full_layers, built_s = setup(args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"built {args.shape} with {args.layers} of {full_layers} layers on the CPU ({weights / 2**30:.1f} GiB of weights) "
          f"in {built_s:.1f} s", flush=True)
    if torch.device(args.device).type == "cuda":
        total = torch.cuda.get_device_properties(args.device).total_memory
        print(f"the model is {weights / total:.2f}x the GPU's {total / 2**30:.1f} GiB", flush=True)
    g = torch.Generator().manual_seed(0)
    samples = torch.randint(0, model.config.vocab_size, (args.nsamples, args.seqlen), generator=g)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context before timing
    rows = []
    for method in args.methods.split(","):
        fill(model, seed=0)
        stamps: list[float] = []
        report = prune_model(model, samples, method=method, sparsity=None if ":" in args.structure else args.sparsity,
                             structure=args.structure, device=device,
                             progress=lambda i, n: stamps.append(time.perf_counter()))
        start = stamps[-1] - report.seconds
        per_layer = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else report.seconds
        first = stamps[0] - start  # input capture + layer 0
        full = first + per_layer * (full_layers - 1)
        est = peak_estimate(model.config, method, args.nsamples, args.seqlen, torch.finfo(dtype).bits // 8)
        reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
        row = dict(shape=args.shape, method=method, structure=report.structure, layers=args.layers,
                   weights_bytes=weights, seconds=report.seconds, seconds_first_layer_with_capture=first,
                   seconds_per_layer=per_layer, seconds_all_layers=full, all_layers=full_layers,
                   peak_allocated=report.peak_device_bytes, peak_reserved=reserved, peak_estimate=est["peak"],
                   overall_sparsity=report.overall)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    try:
        from rich.console import Console
        from rich.table import Table

        gib = 2**30
        table = Table(title=f"prune_model on {args.shape} (random weights), {args.nsamples} x {args.seqlen} tokens, {args.dtype}, "
                            f"{args.layers} of {full_layers} layers built, "
                            f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
        for col in ("method", "s (built)", "s/layer", f"s ({full_layers} layers)", "peak alloc GiB", "peak reserved GiB",
                    "estimate GiB", "sparsity"):
            table.add_column(col, justify="right")
        for r in rows:
            fmt = lambda v: "n/a" if v is None else f"{v / gib:.2f}"  # noqa: E731
            table.add_row(r["method"], f"{r['seconds']:.1f}", f"{r['seconds_per_layer']:.2f}", f"{r['seconds_all_layers']:.1f}",
                          fmt(r["peak_allocated"]), fmt(r["peak_reserved"]), fmt(r["peak_estimate"]),
                          f"{r['overall_sparsity']:.4f}")
        Console(width=200).print(table)
    except ImportError:
        pass
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "args": vars(args) | {"json": str(args.json)},
                                         "environment": environment()}, indent=2, default=str))


if __name__ == "__main__":
    main()
