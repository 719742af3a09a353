"""End-to-end decode targets (issue #8) on a synthetic Llama-2-7B, in one GPU call.

    python benchmarks/decode.py [--dtypes float16,bfloat16] [--batches 1,4,16] [--formats teal,spdp,spinfer]
                                [--hf] [--out DIR] [--budget-s 540]

For each dtype one child process builds the model once on the GPU and measures, in the harness of
``sparsekit bench`` (static KV cache, CUDA-graph decode, greedy, EOS ignored):

- dense at every batch size (the baseline of every ratio; ``--hf`` adds transformers' own
  ``generate`` with its static cache at batch 1);
- teal at s2 = 0.5, spdp at s1 = 0.5 x s2 = 0.5, spinfer at s1 = 0.6, at every batch size: the
  model is converted in place (``convert_model``), timed, then decoded back to dense for the next
  format (random per-row masks are nested: 0.5 then 0.6);
- ``spdp24`` (not in the default list): spdp at s1 = 0.5 x s2 = 0.5 with random masks 2:4 over output
  rows (``--structure 2:4-out``), the pattern of the one-token kernel's balanced path; the model is
  built again from its seed first, since the masks of the formats before it are not of that shape.

Every configuration runs in its own try/except and its result is appended to ``decode.jsonl`` at
once; if the child dies (a CUDA fault poisons the process) the parent starts a new one that skips
what is done and the configuration that crashed. At the end: ``decode.json`` (all rows + target
verdicts) and a short table. ``--out`` defaults to ``$OUT`` when set (the GPU machine), else
``runs/decode``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

FORMATS = {"teal": (0.0, 0.5), "spdp": (0.5, 0.5), "spinfer": (0.6, 0.0), "spdp24": (0.5, 0.5)}  # name -> (s1, s2)
# formats that are another format with another mask structure (a fresh model is pruned for them)
VARIANT_OF = {"spdp24": ("spdp", "2:4-out")}
SDPA_BACKENDS = {"cudnn": "enable_cudnn_sdp", "flash": "enable_flash_sdp", "efficient": "enable_mem_efficient_sdp",
                 "math": "enable_math_sdp"}
TARGETS = "dense TPOT <= 1.25x floor; teal >= 1.75x; spdp >= 2.6x; spinfer TPOT faster, TTFT <= dense; every TTFT <= 1.05x dense (batch 1)"


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synthetic:llama-2-7b")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--formats", default="teal,spdp,spinfer")
    ap.add_argument("--input-tokens", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--hf", action="store_true", help="also time transformers generate (static cache) at batch 1")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/decode")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no configuration after this many seconds")
    ap.add_argument("--device", default="cuda", help="cuda (the targets), or cpu for a smoke test")
    ap.add_argument("--no-compile", action="store_true", help="time the decode step uncompiled (ablation)")
    ap.add_argument("--no-autotune", action="store_true",
                    help="compile without inductor's coordinate-descent tuning (bench's default on the GPU; ablation)")
    ap.add_argument("--eager-prefill", action="store_true", help="compile the decode step only, not the prefill (ablation)")
    ap.add_argument("--no-fuse", action="store_true", help="one launch per projection (ablation)")
    ap.add_argument("--no-glu", action="store_true",
                    help="keep the SwiGLU product as its own kernel, not inside the down projection (ablation)")
    ap.add_argument("--threshold-rule", default="relative", choices=("relative", "absolute"),
                    help="the o_proj thresholds' rule (calibrate's default is relative; absolute: the ablation)")
    ap.add_argument("--tile-rows", type=int, default=64, choices=(32, 64, 128), help="spdp tile rows (spdp, spdp24)")
    ap.add_argument("--tune", default="", help="CUDA kernel knobs for the whole run, e.g. pdl=1 (sparsekit_cuda.tune)")
    ap.add_argument("--tune-variants", default="",
                    help="also time each format with these knobs, e.g. 'l2pf=64;l2pf=32,pdl=1' (rows FMT+KNOBS)")
    ap.add_argument("--sdpa", default="",
                    help="allowed SDPA backends, comma list of cudnn, flash, efficient, math (default: torch's choice)")
    ap.add_argument("--inductor", default="", help="inductor settings for the compiled forwards, e.g. combo_kernels=1 "
                    "(sets SPARSEKIT_INDUCTOR for the children)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # dtype handled by this child process
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _key(dtype, fmt, batch):
    return f"{dtype}/{fmt}/{batch}"


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


KEEP = ("mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
        "p90_tpot_ms", "p99_tpot_ms", "std_tpot_ms", "output_throughput", "decode_throughput", "bandwidth_gbs",
        "floor_tpot_ms", "pct_of_floor", "bytes_per_step", "weight_bytes_per_step", "mode", "decode_graph",
        "prefill_graph", "notes", "tokens_identical_across_repeats", "compiled", "prefill_compiled", "fused_groups", "glu_fused", "autotune")


# ----------------------------------------------------------------------------------- the child
def child(a) -> int:
    import torch

    from sparsekit import bench, synthetic
    from sparsekit.runtime.patch import convert_model

    dtype_name = a.child
    dtype = getattr(torch, dtype_name)
    out = Path(a.out) / "decode.jsonl"
    import sparsekit.ops  # noqa: F401 - loads the extension (and its tune op)

    def knobs_of(spec: str) -> dict[str, int]:
        """'k=v,k=v' -> {k: v}."""
        return {k.strip(): int(v) for k, _, v in (item.partition("=") for item in filter(None, spec.split(",")))}

    def set_knobs(knobs: dict[str, int]) -> dict[str, int]:
        """Apply the knobs (sparsekit_cuda.tune); returns the old values."""
        return {k: int(torch.ops.sparsekit_cuda.tune(k, v)) for k, v in knobs.items()}

    set_knobs(knobs_of(a.tune))
    if a.sdpa:  # process-wide: dense and every format get the same attention kernels (names checked by the parent)
        allowed = set(filter(None, a.sdpa.split(",")))
        for name, enable in SDPA_BACKENDS.items():
            getattr(torch.backends.cuda, enable)(name in allowed)
    variants = [v.strip() for v in a.tune_variants.split(";") if v.strip()]
    skip = set(filter(None, a.skip.split(",")))
    batches = [int(b) for b in a.batches.split(",")]
    formats = [f for f in FORMATS if f in a.formats.split(",")]
    device = torch.device(a.device)
    mode = "graph" if device.type == "cuda" else "eager"
    started = time.time()
    last_cost = [60.0]

    def time_left() -> bool:
        return time.time() + last_cost[0] < a.deadline

    def record(fmt, batch, fn, extra=None) -> dict | None:
        key = _key(dtype_name, fmt, batch)
        if key in skip:
            return None
        if not time_left():
            _append(out, {"key": key, "dtype": dtype_name, "format": fmt, "batch": batch, "error": "skipped: time budget"})
            return None
        _append(out, {"key": key, "started": True})  # a crash after this line marks this config as the culprit
        t0 = time.time()
        try:
            row = fn()
        except Exception as exc:  # noqa: BLE001 - keep going with the next configuration
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            if "CUDA error" in row["error"] or "illegal memory" in row["error"]:
                _append(out, {"key": key, "dtype": dtype_name, "format": fmt, "batch": batch, **row})
                sys.exit(3)  # the CUDA context is gone: the parent restarts a fresh process
        last_cost[0] = time.time() - t0
        row = {"key": key, "dtype": dtype_name, "format": fmt, "batch": batch, "seconds": round(last_cost[0], 1),
               **(extra or {}), **row}
        _append(out, row)
        print(f"[{time.time() - started:6.0f}s] {key}: " + (row.get("error") or
              f"TTFT {row['mean_ttft_ms']:.2f} ms, TPOT {row['mean_tpot_ms']:.3f} ms"), flush=True)
        return row

    model = synthetic.build(a.model, device, dtype, seed=0)
    bw = bench.device_bandwidth_gbs(device)
    print(f"{a.model} {dtype_name} built in {time.time() - started:.0f}s; device copy {bw:.0f} GB/s", flush=True)
    prompts = {b: bench._prompt(model, b, a.input_tokens, 0, device) for b in batches}

    def settings(b):
        return bench.Settings(model=a.model, input_tokens=a.input_tokens, max_new_tokens=a.max_new_tokens,
                              batch_size=b, warmup=a.warmup, repeat=a.repeat, mode=mode,
                              compile=False if a.no_compile else None, compile_prefill=not a.eager_prefill,
                              fuse=not a.no_fuse, autotune=False if a.no_autotune else None)

    def timed(name, b, s2=0.0, harness="owned"):
        def fn():
            r = bench.measure(model, prompts[b], settings(b), name=name, harness=harness, mode=mode,
                              bandwidth_gbs=bw, activation_sparsity=s2)
            return {k: r.get(k) for k in KEEP} | {"device_bandwidth_gbs": bw}
        return fn

    for b in batches:
        record("dense", b, timed("dense", b))
    if a.hf:
        record("hf", 1, timed("hf", 1, harness="hf"))
    for fmt in formats:
        s1, s2 = FORMATS[fmt]
        if all(_key(dtype_name, fmt, b) in skip for b in batches):
            continue
        base, structure = VARIANT_OF.get(fmt, (fmt, "unstructured"))
        try:
            if structure != "unstructured":  # the same random weights, unpruned
                del model
                torch.cuda.empty_cache()
                model = synthetic.build(a.model, device, dtype, seed=0)
            synthetic.apply_weight_sparsity(model, s1, seed=0, structure=structure)
            thresholds = synthetic.calibrate_thresholds(model, s2, seed=0, rule=a.threshold_rule) if s2 > 0 else None
            t0 = time.time()
            report = convert_model(model, base, thresholds, **({"tile_rows": a.tile_rows} if base == "spdp" else {}))
            conv = {"convert_seconds": round(time.time() - t0, 1), "weight_sparsity": report["weight_sparsity"],
                    "bytes": report["bytes"], "dense_bytes": report["dense_bytes"]}
        except Exception as exc:  # noqa: BLE001
            for b in batches:
                _append(out, {"key": _key(dtype_name, fmt, b), "dtype": dtype_name, "format": fmt, "batch": b,
                              "error": f"conversion: {type(exc).__name__}: {str(exc)[:300]}"})
            bench.densify_(model)
            continue
        for b in batches:
            record(fmt, b, timed(fmt, b, s2), extra={"s1": s1, "s2": s2, **conv})
            for v in variants:  # the same converted model, its decode step captured again with these knobs
                def with_knobs(fn=timed(fmt, b, s2), v=v):
                    old = set_knobs(knobs_of(v))
                    try:
                        return fn()
                    finally:
                        set_knobs(old)
                record(f"{fmt}+{v}", b, with_knobs, extra={"s1": s1, "s2": s2, "tune": v, **conv})
        bench.densify_(model)
        torch.cuda.empty_cache()
    return 0


# ---------------------------------------------------------------------------------- the parent
def _rows(path: Path) -> dict[str, dict]:
    rows, started = {}, {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("started"):
                started[r["key"]] = True
            else:
                rows[r["key"]] = r
                started.pop(r["key"], None)
    for key in started:  # began and never finished: the process died in it
        d, f, b = key.split("/")
        rows[key] = {"key": key, "dtype": d, "format": f, "batch": int(b), "error": "the process died in this configuration"}
    return rows


def verdicts(rows: dict[str, dict]) -> list[dict]:
    out = []
    for r in rows.values():
        if "error" in r or r["format"] == "hf":
            continue
        dense = rows.get(_key(r["dtype"], "dense", r["batch"]))
        if dense is None or "error" in dense:
            continue
        r["speedup_tpot_vs_dense"] = dense["mean_tpot_ms"] / r["mean_tpot_ms"]
        r["ttft_ratio_vs_dense"] = r["mean_ttft_ms"] / dense["mean_ttft_ms"]
        if r["batch"] != 1:
            continue
        checks = []
        if r["format"] == "dense":
            checks.append(("TPOT <= 1.25x floor", r["mean_tpot_ms"] <= 1.25 * r["floor_tpot_ms"]))
        else:
            base = r["format"].split("+")[0]  # FMT+KNOBS rows (--tune-variants) answer to FMT's targets
            base = VARIANT_OF.get(base, (base,))[0]
            need = {"teal": 1.75, "spdp": 2.6}.get(base)
            if need:
                checks.append((f"TPOT speedup >= {need}x", r["speedup_tpot_vs_dense"] >= need))
            if base == "spinfer":
                checks.append(("TPOT faster than dense", r["speedup_tpot_vs_dense"] > 1.0))
                checks.append(("TTFT <= dense", r["ttft_ratio_vs_dense"] <= 1.0))
            checks.append(("TTFT <= 1.05x dense", r["ttft_ratio_vs_dense"] <= 1.05))
        for name, ok in checks:
            out.append({"dtype": r["dtype"], "format": r["format"], "target": name, "pass": bool(ok)})
    return out


def table(rows: dict[str, dict], checks: list[dict]) -> str:
    lines = [f"{'dtype':9} {'fmt':8} {'B':>3} {'TTFT ms':>8} {'TPOT ms':>8} {'floor':>7} {'%floor':>6} "
             f"{'GB/s':>7} {'speedup':>7} {'TTFT/d':>6}  note"]
    order = {"dense": 0, "hf": 1, "teal": 2, "spdp": 3, "spdp24": 4, "spinfer": 5}
    for r in sorted(rows.values(), key=lambda r: (r["dtype"], r["batch"], order.get(r["format"].split("+")[0], 9),
                                                   r["format"])):
        if "error" in r:
            lines.append(f"{r['dtype']:9} {r['format']:8} {r['batch']:>3} {r['error'][:80]}")
            continue
        sp = r.get("speedup_tpot_vs_dense")
        tr = r.get("ttft_ratio_vs_dense")
        note = "EAGER decode: " + "; ".join(r.get("notes") or []) if r.get("mode") == "graph" and not r.get("decode_graph") \
            else ("eager (CPU)" if r.get("mode") == "eager" else
                  ", ".join(x for x in ("compiled" if r.get("compiled") else "", "autotuned" if r.get("autotune") else "", "fused" if r.get("fused_groups") else "",
                                         "glu" if r.get("glu_fused") else "") if x))
        lines.append(f"{r['dtype']:9} {r['format']:8} {r['batch']:>3} {r['mean_ttft_ms']:8.2f} {r['mean_tpot_ms']:8.3f} "
                     f"{r['floor_tpot_ms']:7.3f} {r['pct_of_floor']:5.0f}% {r['bandwidth_gbs']:7.0f} "
                     f"{'-' if sp is None else f'{sp:.2f}x':>7} {'-' if tr is None else f'{tr:.2f}':>6}  {note}")
    lines.append("")
    lines += [f"{'PASS' if c['pass'] else 'FAIL'}  {c['dtype']:9} {c['format']:8} {c['target']}" for c in checks]
    return "\n".join(lines)


def child_command(a, dtype: str, deadline: float, skip: str, out: Path) -> list[str]:
    """The child process's command line: every setting of the parent's that the child reads (SPARSEKIT_FUSE_GLU
    and SPARSEKIT_INDUCTOR travel in its environment)."""
    return [sys.executable, __file__, "--child", dtype, "--deadline", str(deadline), "--skip", skip,
            "--model", a.model, "--batches", a.batches, "--formats", a.formats, "--input-tokens",
            str(a.input_tokens), "--max-new-tokens", str(a.max_new_tokens), "--warmup", str(a.warmup),
            "--repeat", str(a.repeat), "--out", str(out), "--device", a.device] + (["--hf"] if a.hf else []) \
        + (["--no-compile"] if a.no_compile else []) + (["--no-autotune"] if a.no_autotune else []) \
        + (["--no-fuse"] if a.no_fuse else []) \
        + (["--eager-prefill"] if a.eager_prefill else []) + ["--threshold-rule", a.threshold_rule] \
        + ["--tile-rows", str(a.tile_rows)] + (["--sdpa", a.sdpa] if a.sdpa else []) \
        + (["--tune", a.tune] if a.tune else []) + (["--tune-variants", a.tune_variants] if a.tune_variants else [])


def parent(a) -> int:
    unknown = set(filter(None, a.sdpa.split(","))) - set(SDPA_BACKENDS)
    if unknown:
        print(f"--sdpa: unknown backend(s) {', '.join(sorted(unknown))}; use {', '.join(SDPA_BACKENDS)}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "decode.jsonl"
    if jsonl.exists():
        jsonl.unlink(missing_ok=True)
    deadline = time.time() + a.budget_s
    for dtype in a.dtypes.split(","):
        for attempt in range(4):
            done = _rows(jsonl)
            if time.time() > deadline - min(60.0, 0.5 * a.budget_s):  # too little left to start a child
                break
            skip = ",".join(k for k in done if k.startswith(dtype + "/"))
            cmd = child_command(a, dtype, deadline, skip, out)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"SPARSEKIT_FUSE_GLU": "0"} if a.no_glu else {}),
                   **({"SPARSEKIT_INDUCTOR": a.inductor} if a.inductor else {})}
            rc = subprocess.run(cmd, env=env).returncode
            if rc == 0:
                break
            print(f"child for {dtype} exited with {rc}; restarting without the configurations done or crashed", flush=True)
    rows = _rows(jsonl)
    checks = verdicts(rows)
    import torch  # for the environment block only

    from sparsekit.env import environment

    result = {"model": a.model, "input_tokens": a.input_tokens, "max_new_tokens": a.max_new_tokens,
              "warmup": a.warmup, "repeat": a.repeat, "formats": {f: FORMATS[f] for f in a.formats.split(",")},
              "targets": TARGETS, "tune": a.tune, "tune_variants": a.tune_variants,
              "sdpa": a.sdpa, "autotune": not a.no_autotune, "inductor": a.inductor or os.environ.get("SPARSEKIT_INDUCTOR", ""), "glu": not a.no_glu, "rows": list(rows.values()), "checks": checks,
              "environment": environment() if torch.cuda.is_available() else {}}
    tmp = out / ".decode.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, out / "decode.json")
    jsonl.unlink(missing_ok=True)
    text = table(rows, checks)
    (out / "decode.txt").write_text(text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    a = _args(argv)
    if a.child:
        return child(a)
    return parent(a)


if __name__ == "__main__":
    sys.exit(main())
