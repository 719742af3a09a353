#!/usr/bin/env python3
"""GPU check of every kernel backend: ``sparsekit kernel-test --device cuda --shapes all --bench``,
then a short table of the numbers that matter. Run on the GPU machine after building the extension
(``pip install --no-build-isolation --no-deps -e .``):

    python benchmarks/gpu_kernels.py [--out kernel_test_gpu.json] [--dtype float16] [--shapes all]

The full rows (every op, backend, dtype, shape, s1 x s2) land in the JSON file; the table keeps:
teal at s2 = 0 and 0.5, spdp at s1 = s2 = 0.5, spinfer at s1 = 0.5 / 0.7 with 16 tokens.
Timings are CUDA-graph replays over rotating weight copies (not L2-resident); speedups are over
dense ``x @ W.T`` (cuBLAS) in the same harness.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "kernel_test_gpu.json"))
    ap.add_argument("--shapes", default="all")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    cmd = [sys.executable, "-c", "from sparsekit.cli import main; main()", "kernel-test", "--device", "cuda", "--shapes", args.shapes, "--bench", "--json"]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    try:
        res = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"kernel-test printed no JSON (exit {proc.returncode})")
        return proc.returncode or 1
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    checks = res["checks"]
    bad = [c for c in checks if not c["passed"]]
    print(f"correctness: {len(checks) - len(bad)} of {len(checks)} checks passed")
    for c in bad[:20]:
        print(f"  FAIL {c['op']} {c['backend']} {c['dtype']} {c['shape']} T={c['tokens']} err={c['max_rel_err']:.2e} {c['note']}")
    keep = lambda r: ((r["op"] == "teal_matvec" and r["s2"] in (0.0, 0.5))  # noqa: E731
                      or (r["op"] == "spdp_matvec" and r["s1"] == 0.5 and r["s2"] == 0.5)
                      or (r["op"] == "spinfer_matmul" and r["s1"] in (0.5, 0.7) and r["tokens"] == 16))
    rows = [r for r in res["bench"] if keep(r)]
    if rows:
        print(f"{'op':<15} {'backend':<7} {'dtype':<9} {'K->N':<11} {'T':>2} {'s1':>4} {'s2':>4} {'us':>9} {'dense us':>9} "
              f"{'speedup':>8} {'GB/s':>7} {'x floor':>7}")
        for r in rows:
            print(f"{r['op']:<15} {r['backend']:<7} {r['dtype']:<9} {r['shape']:<11} {r['tokens']:>2} {r['s1']:>4g} {r['s2']:>4g} "
                  f"{r['ms'] * 1e3:>9.1f} {r['dense_ms'] * 1e3:>9.1f} {r['speedup']:>7.2f}x {r['gbs']:>7.0f} {r['x_floor']:>7.2f}")
    print(f"full results: {args.out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
