#!/usr/bin/env python3
"""CPU decode matvec (one token): sparsekit's C++ kernels against torch's dense ``x @ W.T``.

Every repetition times the dense matvec and the sparse op back to back (same process, same
moment), and the speedup reported is the median of the per-repetition ratios, so slow drifts in a
shared machine's load cancel. Shapes are Llama-2-7B's MLP (K in -> N out).

    python benchmarks/cpu_kernels.py                 # 2 threads, fp32 + bf16
    python benchmarks/cpu_kernels.py --threads 1 --reps 31
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import sparsekit.ops as ops
from sparsekit.formats import spdp


def paired(dense, sparse, reps: int) -> tuple[float, float, float]:
    dense(), sparse()
    td, ts, ratio = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        dense()
        t1 = time.perf_counter()
        sparse()
        t2 = time.perf_counter()
        td.append(t1 - t0)
        ts.append(t2 - t1)
        ratio.append((t1 - t0) / (t2 - t1))
    return statistics.median(td), statistics.median(ts), statistics.median(ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--act", default="0,0.5,0.7,0.9", help="activation sparsities")
    ap.add_argument("--weight", default="0,0.5", help="weight sparsities for spdp")
    ap.add_argument("--tile-rows", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    isa = torch.ops.sparsekit._cpu_isa("")
    print(f"# CPU kernels: {platform.processor() or platform.machine()}, {args.threads} threads, ISA path {isa}, "
          f"torch {torch.__version__}, load average at start {os.getloadavg()[0]:.1f}")
    print("| op | K->N | dtype | s1 | s2 | dense ms | sparse ms | speedup (median of paired ratios) |")
    print("|---|---|---|---|---|---|---|---|")
    for k, n in ((4096, 11008), (11008, 4096)):
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            w = torch.randn(n, k).to(dtype)
            w_t = w.t().contiguous()
            x = torch.randn(1, k).to(dtype)
            dense = lambda: x @ w.T  # noqa: E731
            for s2 in (float(s) for s in args.act.split(",")):
                thr = float(torch.quantile(x.float().abs(), s2)) if s2 > 0 else 0.0
                td, ts, r = paired(dense, lambda: ops.teal_matvec(x, w_t, thr, backend="cpu"), args.reps)
                print(f"| teal_matvec | {k}->{n} | {name} | 0 | {s2:g} | {td*1e3:.2f} | {ts*1e3:.2f} | {r:.2f}x |", flush=True)
            for s1 in (float(s) for s in args.weight.split(",")):
                ws = w.clone()
                if s1 > 0:
                    ws[torch.rand(n, k) < s1] = 0
                packed = spdp.encode(ws, args.tile_rows)
                for s2 in (float(s) for s in args.act.split(",")):
                    thr = float(torch.quantile(x.float().abs(), s2)) if s2 > 0 else 0.0
                    td, ts, r = paired(dense, lambda: ops.spdp_matvec(x, packed, thr, backend="cpu"), args.reps)
                    print(f"| spdp_matvec R={args.tile_rows} | {k}->{n} | {name} | {s1:g} | {s2:g} | {td*1e3:.2f} | {ts*1e3:.2f} | {r:.2f}x |",
                          flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
