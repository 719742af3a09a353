"""Which kernels a compiled, fused decode step runs, and for how long (run on the GPU machine).

    python benchmarks/decode_kernels.py [--format teal] [--s2 0.5] [--dtype float16] [--steps 16]

Builds the synthetic Llama-2-7B, converts it (``--format dense`` keeps nn.Linear), fuses q/k/v and
gate/up, compiles and captures the decode step exactly like ``sparsekit bench`` (``DecodeSession``
with ``compile=True``, ``mode="graph"``), then records ``--steps`` graph replays with
torch.profiler and prints the kernels grouped by name: time per token (µs), launches per token and
share of the GPU busy time. Unlike ``sparsekit profile`` it does not attribute kernels to layer
parts (compiled kernels have no eager counterpart); it shows where a compiled token goes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synthetic:llama-2-7b")
    ap.add_argument("--format", default="teal", help="dense, teal, spdp, spinfer")
    ap.add_argument("--s1", type=float, default=0.0)
    ap.add_argument("--s2", type=float, default=0.5)
    ap.add_argument("--structure", default="unstructured", help="weight pattern of s1, e.g. 2:4-out")
    ap.add_argument("--tile-rows", type=int, default=64, choices=(32, 64, 128), help="spdp tile rows")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from sparsekit import bench, synthetic
    from sparsekit.runtime.fuse import fuse_projections
    from sparsekit.runtime.generate import DecodeSession
    from sparsekit.runtime.patch import convert_model

    dev = torch.device("cuda")
    model = synthetic.build(a.model, dev, getattr(torch, a.dtype), seed=0)
    if a.s1 > 0:
        synthetic.apply_weight_sparsity(model, a.s1, seed=0, structure=a.structure)
    if a.format != "dense":
        convert_model(model, a.format, synthetic.calibrate_thresholds(model, a.s2, seed=0) if a.s2 > 0 else None,
                      **({"tile_rows": a.tile_rows} if a.format == "spdp" else {}))
    fused = fuse_projections(model)
    prompt = bench._prompt(model, a.batch, 32, 0, dev)
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=a.batch, prompt_len=32, max_new_tokens=a.steps + 4, mode="graph",
                             compile=True)
        sess.set_prompt(prompt)
        sess.reset()
        sess.prefill()
        for _ in range(2):
            sess.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.steps):
                sess.step()
            torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name][0] += ev.time_range.elapsed_us()
            per[ev.name][1] += 1
    busy = sum(v[0] for v in per.values()) / a.steps
    rows = sorted(((name, t / a.steps, n / a.steps) for name, (t, n) in per.items()), key=lambda r: -r[1])
    label = f"{a.format} s1={a.s1} s2={a.s2} {a.dtype} batch {a.batch}"
    print(f"## {label}: compiled={sess.compiled} graph={sess.decode_graph is not None} fused_groups={fused}")
    print(f"GPU busy per token {busy:.1f} µs; launches per token {sum(r[2] for r in rows):.0f}")
    other_t = other_n = 0.0
    for i, (name, t, n) in enumerate(rows):
        if i < a.top:
            print(f"{t:9.1f} µs {n:6.1f}x {100 * t / busy:5.1f}%  {name[:110]}")
        else:
            other_t += t
            other_n += n
    print(f"{other_t:9.1f} µs {other_n:6.1f}x {100 * other_t / busy:5.1f}%  (the other {max(0, len(rows) - a.top)} kernels)")
    if a.json:
        Path(a.json).write_text(json.dumps({"label": label, "busy_us": busy, "kernels": rows}, indent=1))


if __name__ == "__main__":
    main()
