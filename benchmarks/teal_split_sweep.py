"""teal_matvec at T = 1 for every split-K factor S on the shapes a fused layer launches (GPU).

    python benchmarks/teal_split_sweep.py [--json OUT.json]

The automatic split (``choose_split`` in csrc/cuda/ops_cuda.cu) fills the SMs by block count. This
sweep times each S in 1..8 with ``tune("split", S)``, fp16, s2 = 0 and 0.5, in the harness of
``cuda_kernels.py``, next to cuBLAS and the automatic choice, to check that rule per shape.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_kernels import COPIES, FUSED_SHAPES, rand_weight, threshold, time_graph, tuned  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--lpr", default="16", help="lanes per row segment to sweep too (teal_lpr: 8, 16, 32)")
    a = ap.parse_args()
    from sparsekit import ops

    tune = torch.ops.sparsekit_cuda.tune
    rows = []
    clusters = {s: int(tune("clusters", s)) for s in range(2, 9)}
    print("resident clusters of S blocks (fp16 one-token teal kernel): "
          + ", ".join(f"S={s}: {c}" for s, c in clusters.items()))
    print(f"## teal split sweep, fp16, T=1, {torch.cuda.get_device_name()} (µs; cuBLAS; auto S; S=1..8)")
    for name, (n, k) in FUSED_SHAPES.items():
        ws = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        wts = [w.t().contiguous() for w in ws]
        x = torch.randn((1, k), device="cuda").half()
        dense, _ = time_graph([lambda w=w: F.linear(x, w) for w in ws])
        for s2 in (0.0, 0.5):
            thr = threshold(x, s2)
            auto, _ = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
            auto_s = tune("last_split", -1)
            for lpr in (int(v) for v in a.lpr.split(",")):
                per = {}
                for s in range(1, 9):
                    with tuned(tune, {"split": s, "teal_lpr": lpr}):
                        per[s], _ = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                best = min(per, key=per.get)
                rows.append({"shape": name, "s2": s2, "lpr": lpr, "cublas": dense, "auto": auto, "auto_split": auto_s,
                             "per_split": per, "best_split": best})
                cells = " ".join(f"{per[s]:6.2f}" for s in range(1, 9))
                print(f"{name:20s} s2={s2:.1f} lpr={lpr:<2d} cuBLAS {dense:6.2f} auto(S={auto_s}) {auto:6.2f} | {cells} | "
                      f"best S={best} {dense / per[best]:.2f}x", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"clusters": clusters, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
