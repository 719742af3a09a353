#!/usr/bin/env python3
"""Time and peak device memory of `calibrate_model` (TEAL histograms) on a Llama-2-7B-shaped model.

The model has random weights (built on the CPU in fp16 by `prune_7b.build`: 13.5 GB of RAM for all
32 layers); calibration is 128 random-token sequences of 2048 tokens; one decoder layer at a time is
on the device, as in `sparsekit prune`. ``--layers N`` builds only the first N decoder layers and
extrapolates the time to all 32 from the measured per-layer time (peak device memory does not
depend on the number of layers). ``--greedy`` adds the greedy allocation.

  python benchmarks/calibrate_7b.py --json calibrate_7b.json            # 7B, all 32 layers
  python benchmarks/calibrate_7b.py --layers 4 --greedy                 # time extrapolated from 4 layers
  python benchmarks/calibrate_7b.py --device cpu --layers 1 --nsamples 2 --seqlen 128   # smoke test

Prints: seconds for the layers built (and per phase: histograms, in-use correction, greedy),
seconds per layer, extrapolated seconds for all layers, peak allocated / reserved device memory,
the size of the calibration dir it writes, and the engine's memory formula for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from prune_7b import add_model_args, setup

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, "a sparsekit.synthetic shape", "decoder layers to build [default: all]; time is extrapolated",
                   ["float16", "bfloat16", "float32"])
    ap.add_argument("--greedy", action="store_true", help="also run the greedy allocation")
    args = ap.parse_args()

    from sparsekit.activation import calibrate_model
    from sparsekit.env import environment

    model, dtype, device, full_layers, built_s = setup(args)
    cfg = model.config
    print(f"built {args.shape} with {args.layers} of {full_layers} layers on the CPU in {built_s:.1f} s", flush=True)
    samples = torch.randint(0, cfg.vocab_size, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    done = []

    def progress(i: int, n: int) -> None:
        done.append(time.perf_counter())
        print(f"  layer {i}/{n}: {done[-1] - start:.1f} s", flush=True)

    start = time.perf_counter()
    cal = calibrate_model(model, samples, device=device, greedy=args.greedy, progress=progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    # the first layer also pays for capturing the layer-0 inputs (embedding): per-layer time from the rest
    per_layer = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else seconds
    first = done[0] - start
    with tempfile.TemporaryDirectory() as tmp:
        out = cal.save(Path(tmp) / "cal")
        size = sum(p.stat().st_size for p in out.iterdir())
    itemsize = torch.tensor([], dtype=dtype).element_size()
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    acts = 2 * args.nsamples * args.seqlen * cfg.hidden_size * itemsize
    row = {
        "shape": args.shape, "layers_built": args.layers, "layers": full_layers, "nsamples": args.nsamples,
        "seqlen": args.seqlen, "dtype": args.dtype, "greedy": args.greedy,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seconds": seconds, "seconds_first_layer": first, "seconds_per_layer": per_layer,
        "seconds_all_layers": first + per_layer * (full_layers - 1),
        "phases": cal.info.get("phases"),
        "peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_reserved": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        "formula_bytes": layer_bytes + acts,  # one layer + 2 x (nsamples x seqlen x hidden), the engine's bound
        "calibration_dir_bytes": size,
        "greedy_evaluations": (cal.info.get("greedy") or {}).get("evaluations"),
    }
    gib = 2**30
    fmt = lambda v: "n/a" if v is None else f"{v / gib:.2f} GiB"  # noqa: E731
    print(f"calibrate_model on {args.shape} (random weights), {args.nsamples} x {args.seqlen} tokens, {args.dtype}, "
          f"{'greedy, ' if args.greedy else ''}{args.layers} of {full_layers} layers built, {row['device']}")
    print(f"  {seconds:.1f} s for {args.layers} layers ({per_layer:.2f} s/layer after the first, first {first:.1f} s); "
          f"extrapolated to {full_layers} layers: {row['seconds_all_layers']:.1f} s")
    if row["phases"]:
        print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in row["phases"].items()))
    print(f"  peak device memory: {fmt(row['peak_allocated'])} allocated, {fmt(row['peak_reserved'])} reserved "
          f"(one layer + 2 x activations = {fmt(row['formula_bytes'])})")
    print(f"  calibration dir: {size / 2**20:.1f} MiB for {args.layers} layers")
    if args.json:
        args.json.write_text(json.dumps({"row": row, "args": vars(args) | {"json": str(args.json)},
                                         "environment": environment()}, indent=2, default=str))


if __name__ == "__main__":
    main()
