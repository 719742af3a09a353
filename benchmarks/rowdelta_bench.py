"""One-token products of unstructured sparse weights: rowdelta against spinfer and cuBLAS (GPU).

    python benchmarks/rowdelta_bench.py [--sparsities 0.5,0.6,0.7] [--dtypes float16,bfloat16]
                                        [--shapes qkv,o,gate_up,down] [--json OUT.json]

Llama-2-7B shapes (the fused q/k/v and gate/up launches included), one token, unstructured random
masks (zeros written as +0.0); times from CUDA-graph replays over 8 rotated weight copies (the harness of
``cuda_kernels.py``): cuBLAS on the dense weight, ``spinfer_matmul`` (tensor cores, the path before
rowdelta) and ``rowdelta_matvec``. Each product is checked against ``F.linear`` first. GB/s is on the
bytes each path reads (rowdelta: values + steps + offsets); the floor is those bytes at the measured
copy bandwidth.
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

from cuda_kernels import COPIES, time_graph  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


def nbytes(packed: dict) -> int:
    return sum(t.numel() * t.element_size() for t in packed.values() if isinstance(t, torch.Tensor))


def copy_gbs() -> float:
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda").fill_(1.0)
    b = torch.empty_like(a)
    us, _ = time_graph([lambda: b.copy_(a)], replays=10)
    return 2 * a.numel() * 4 / (us * 1e-6) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsities", default="0.5,0.6,0.7")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--no-spinfer", action="store_true", help="skip the tensor-core spinfer kernel")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("rowdelta_bench.py needs a CUDA GPU.")
    from sparsekit import ops
    from sparsekit.formats import rowdelta, spinfer

    bw = copy_gbs()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s; one token, {COPIES} weight copies")
    print(f"{'shape':>8} {'dtype':>9} {'s1':>4} | {'cuBLAS us':>9} | {'spinfer us':>10} {'x':>5} | "
          f"{'rowdelta us':>11} {'x':>5} {'GB/s':>6} {'floor':>5}")
    rows = []
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            x = torch.randn(1, k, device="cuda").to(dtype)
            g = torch.Generator(device="cuda").manual_seed(n + k)
            dense = [(torch.randn((n, k), generator=g, device="cuda") * 0.02).to(dtype) for _ in range(COPIES)]
            t_dense, _ = time_graph([lambda w=w: F.linear(x, w) for w in dense])
            for s1 in (float(s) for s in args.sparsities.split(",")):
                mask = torch.rand((n, k), generator=g, device="cuda") >= s1
                zero = torch.zeros((), dtype=dtype, device="cuda")
                ws = [torch.where(mask, w, zero) for w in dense]  # +0.0: w * mask would keep -0.0 (a non-zero pattern)
                want = F.linear(x.float(), ws[0].float()).to(dtype)
                rd = [rowdelta.encode(w) for w in ws]
                got = ops.rowdelta_matvec(x, rd[0], backend="cuda")
                err = float((got.float() - want.float()).norm() / want.float().norm())
                assert err < 2e-2, f"rowdelta {name} {dname} s1={s1}: relative error {err:.1e}"
                t_rd, spread = time_graph([lambda p=p: ops.rowdelta_matvec(x, p, backend="cuda") for p in rd])
                rd_bytes = nbytes(rd[0])
                del rd
                t_sp = float("nan")
                if not args.no_spinfer:
                    sp = [spinfer.encode(w) for w in ws]
                    t_sp, _ = time_graph([lambda p=p: ops.spinfer_matmul(x, p, backend="cuda") for p in sp])
                    del sp
                del ws
                floor = rd_bytes / (bw * 1e9) * 1e6
                row = {"shape": name, "n": n, "k": k, "dtype": dname, "s1": s1, "cublas_us": t_dense,
                       "spinfer_us": t_sp, "rowdelta_us": t_rd, "rowdelta_spread_us": spread,
                       "rowdelta_bytes": rd_bytes, "rowdelta_gbs": rd_bytes / (t_rd * 1e-6) / 1e9,
                       "rowdelta_floor_us": floor, "speedup_vs_cublas": t_dense / t_rd,
                       "spinfer_vs_cublas": t_dense / t_sp, "rel_err": err}
                rows.append(row)
                print(f"{name:>8} {dname:>9} {s1:>4.2f} | {t_dense:9.1f} | {t_sp:10.1f} {t_dense / t_sp:5.2f} | "
                      f"{t_rd:11.1f} {t_dense / t_rd:5.2f} {row['rowdelta_gbs']:6.0f} {floor / t_rd:5.2f}", flush=True)
            del dense
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_gbs": bw,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
