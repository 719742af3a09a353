"""Which kernels a compiled, fused decode step runs, and for how long (run on the GPU machine).

    python benchmarks/decode_kernels.py [--format teal] [--s2 0.5] [--dtype float16] [--steps 16] [--prefill]

Builds the synthetic Llama-2-7B, converts it (``--format dense`` keeps nn.Linear), fuses q/k/v and
gate/up, compiles and captures the decode step exactly like ``sparsekit bench`` (``DecodeSession``
with ``compile=True``, ``mode="graph"``), then records ``--steps`` graph replays with
torch.profiler and prints the kernels grouped by name: time per token (µs), launches per token and
share of the GPU busy time. Unlike ``sparsekit profile`` it does not attribute kernels to layer
parts (compiled kernels have no eager counterpart); it shows where a compiled token goes.
``--prefill`` does the same for the 32-token prefill graph (where TTFT goes) and times its replays
with CUDA events. Like ``sparsekit bench``, it compiles with inductor's coordinate-descent tuning
unless ``--no-autotune``.
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
    ap.add_argument("--prefill", action="store_true", help="also profile the prefill graph")
    ap.add_argument("--no-autotune", action="store_true", help="compile without coordinate-descent tuning")
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
                             compile=True, inductor=None if a.no_autotune else bench.AUTOTUNE_INDUCTOR)
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
        label = f"{a.format} s1={a.s1} s2={a.s2} {a.structure} {a.dtype} batch {a.batch}"
        print(f"## {label}: compiled={sess.compiled} graph={sess.decode_graph is not None} fused_groups={fused} "
              f"autotune={not a.no_autotune}")
        out = {"label": label, "decode": _table(prof, a.steps, "decode step", a.top), "gaps": _gaps(prof, a.steps)}
        if a.prefill:
            times = []
            for _ in range(a.steps):
                sess.reset()
                ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ev0.record()
                sess.prefill()
                ev1.record()
                torch.cuda.synchronize()
                times.append(ev0.elapsed_time(ev1))
            times.sort()
            print(f"prefill graph={sess.prefill_graph is not None} replay (CUDA events) median "
                  f"{times[len(times) // 2]:.3f} ms, min {times[0]:.3f} ms")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(a.steps):
                    sess.reset()
                    sess.prefill()
                torch.cuda.synchronize()
            out["prefill"] = _table(prof, a.steps, "prefill (with the cache reset)", a.top)
            out["prefill_replay_ms"] = times
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def _table(prof, steps: int, what: str, top: int) -> dict:
    """Print the profiled CUDA kernels grouped by name, per ``what``; return them."""
    import torch

    per = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name][0] += ev.time_range.elapsed_us()
            per[ev.name][1] += 1
    busy = sum(v[0] for v in per.values()) / steps
    rows = sorted(((name, t / steps, n / steps) for name, (t, n) in per.items()), key=lambda r: -r[1])
    print(f"### {what}: GPU busy {busy:.1f} µs; launches {sum(r[2] for r in rows):.0f}")
    other_t = other_n = 0.0
    for i, (name, t, n) in enumerate(rows):
        if i < top:
            print(f"{t:9.1f} µs {n:6.1f}x {100 * t / busy:5.1f}%  {name[:110]}")
        else:
            other_t += t
            other_n += n
    print(f"{other_t:9.1f} µs {other_n:6.1f}x {100 * other_t / busy:5.1f}%  (the other {max(0, len(rows) - top)} kernels)")
    return {"busy_us": busy, "kernels": rows}


def _gaps(prof, steps: int, top: int = 8) -> dict:
    """Idle GPU time between consecutive kernels (next start - previous end), summed per step and
    grouped by the pair of kernels around each gap: whether some kinds of launches wait longer."""
    import torch

    evs = sorted((ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda ev: ev.time_range.start)
    per = defaultdict(lambda: [0.0, 0])
    for prev, nxt in zip(evs, evs[1:]):
        gap = nxt.time_range.start - prev.time_range.end
        if 0 <= gap < 50:  # longer: the host between two replays, not a gap inside the step
            key = f"{prev.name[:40]} -> {nxt.name[:50]}"
            per[key][0] += gap
            per[key][1] += 1
    total = sum(v[0] for v in per.values()) / steps
    rows = sorted(((k, t / steps, n / steps) for k, (t, n) in per.items()), key=lambda r: -r[1])
    print(f"### gaps inside the step: {total:.1f} µs per step")
    for k, t, n in rows[:top]:
        print(f"{t:9.1f} µs {n:6.1f}x {t / max(n, 1e-9):6.2f} µs each  {k}")
    return {"gap_us": total, "pairs": rows}


if __name__ == "__main__":
    main()
