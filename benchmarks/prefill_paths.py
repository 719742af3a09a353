"""Prefill-sized calls (T = 8 ... 128 tokens) of a packed weight: which path is fastest (GPU).

    python benchmarks/prefill_paths.py [--json OUT.json]
    python benchmarks/prefill_paths.py --mm [--balanced] [--tokens 1,2,4,8,16,32,64,128,256,512] [--json OUT.json]

For Llama-2-7B shapes at 50 % (spdp) / 60 % (spinfer) weight sparsity, fp16, dense activations, times
in the harness of ``cuda_kernels.py`` (CUDA-graph replays over 8 rotated weight copies):
cuBLAS on the dense weight; spdp decode + cuBLAS (the runtime's prefill path from 8 tokens);
``spdp_decode`` alone; the spdp matvec kernels on T tokens (CUDA, Triton); spinfer (CUDA, Triton).

``--mm``: the tensor-core spdp kernel (``spdp_matvec`` from 4 tokens, csrc/cuda/spdp_mm.cuh) against
cuBLAS, decode + cuBLAS and the matvec kernels (``tune("spdp_mm", 2)``), fp16 at 64-row tiles over
the token counts of a prefill and a decode batch, on the shapes of a fused Llama-2-7B layer; then
tile rows 32/128 and bf16 at 32 tokens. Each configuration is checked against ``F.linear`` first.
``--balanced``: the weights are pruned 2:4 over output rows (``--structure 2:4-out``), so the kernel's
balanced expansion runs; each table then also times the generic expansion (``tune("spdp_bal", 2)``).
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

from cuda_kernels import COPIES, prune_24_out, rand_weight, time_graph  # noqa: E402

SHAPES = {"4096->11008": (11008, 4096), "11008->4096": (4096, 11008), "4096->4096": (4096, 4096)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default=None, help="default 8,32,128 (with --mm: 1,2,4,...,512)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--decode-sweep", action="store_true", help="only time spdp_decode, CUDA against Triton")
    ap.add_argument("--mm", action="store_true", help="the tensor-core spdp kernel against cuBLAS and the other paths")
    ap.add_argument("--balanced", action="store_true", help="with --mm: weights pruned 2:4 over output rows")
    ap.add_argument("--ncu", action="store_true",
                    help="for ncu: one tensor-core spdp_matvec launch on qkv 4096->12288, fp16, R = 64, --tokens "
                         "(default 32), 2:4-over-rows weights with --balanced; then one spdp_decode of that weight")
    a = ap.parse_args()
    if a.decode_sweep:
        return decode_sweep(a)
    if a.ncu:
        return ncu_launches(a)
    if a.mm:
        return mm_sweep(a)
    from sparsekit import ops
    from sparsekit.formats import spdp, spinfer

    rows = []
    gpu = torch.cuda.get_device_name()
    print(f"## prefill paths, fp16, {gpu} (µs per call, CUDA-graph replays)")
    for name, (n, k) in SHAPES.items():
        w = [rand_weight(n, k, 0.5, seed=s) for s in range(COPIES)]
        sp = [{key: (v.cuda() if key != "shape" else tuple(v.tolist())) for key, v in spdp.encode(x, 64).items()}
              for x in w]
        w6 = rand_weight(n, k, 0.6, seed=99)
        si = {key: (v.cuda() if key != "shape" else v) for key, v in spinfer.encode(w6).items()}
        for p, dense_w in zip(sp, w):
            assert torch.equal(ops.spdp_decode(p), dense_w)
        us, _ = time_graph([lambda p=p: ops.spdp_decode(p) for p in sp])
        rows.append({"shape": name, "T": 0, "path": "spdp_decode alone", "us": us})
        for t in (int(v) for v in (a.tokens or "8,32,128").split(",")):
            x = torch.randn((t, k), device="cuda").half()
            paths = {
                "cuBLAS dense": [lambda w=w_: F.linear(x, w) for w_ in w],
                "spdp decode + cuBLAS": [lambda p=p: F.linear(x, ops.spdp_decode(p)) for p in sp],
                "spdp matvec cuda": [lambda p=p: ops.spdp_matvec(x, p, 0.0, backend="cuda") for p in sp],
                "spdp matvec triton": [lambda p=p: ops.spdp_matvec(x, p, 0.0, backend="triton") for p in sp],
                "spinfer cuda": [lambda: ops.spinfer_matmul(x, si, backend="cuda")] * COPIES,
                "spinfer triton": [lambda: ops.spinfer_matmul(x, si, backend="triton")] * COPIES,
            }
            base = None
            for label, calls in paths.items():
                try:
                    us, _ = time_graph(calls)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{name:12s} T={t:<4d} {label:22s} failed: {str(exc).splitlines()[0][:100]}")
                    continue
                base = us if label == "cuBLAS dense" else base
                rows.append({"shape": name, "T": t, "path": label, "us": us, "vs_dense": base / us if base else None})
        for r in rows:
            if r["shape"] == name:
                ratio = f"{r['vs_dense']:.2f}x" if r.get("vs_dense") else ""
                print(f"{name:12s} T={r['T']:<4d} {r['path']:22s} {r['us']:9.2f} µs {ratio}")
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))


FUSED = {"qkv 4096->12288": (12288, 4096), "o 4096->4096": (4096, 4096), "gate/up 4096->22016": (22016, 4096),
         "down 11008->4096": (4096, 11008)}


def mm_sweep(a) -> None:
    from sparsekit import ops
    from sparsekit.formats import spdp

    tune = torch.ops.sparsekit_cuda.tune
    tokens = [int(v) for v in (a.tokens or "1,2,4,8,16,32,64,128,256,512").split(",")]
    gpu = torch.cuda.get_device_name()
    rows = []
    kind = "2:4 over output rows" if a.balanced else "50% unstructured"
    print(f"## spdp on tensor cores, {kind} weights, dense activations, {gpu} (µs per call; x = cuBLAS / path)")

    def weight(n, k, s):
        return prune_24_out(rand_weight(n, k, 0.0, seed=s), seed=s + 500) if a.balanced else rand_weight(n, k, 0.5, seed=s)

    def run(name, n, k, r, dtype, ts, others):
        w = [weight(n, k, s).to(dtype) for s in range(COPIES)]
        sp = [{key: (v.cuda() if key != "shape" else tuple(v.tolist())) for key, v in spdp.encode(x, r).items()}
              for x in w]
        layer = {}
        for t in ts:
            x = (torch.randn((t, k), device="cuda") * 0.5).to(dtype)
            expect = F.linear(x, w[0])
            got = ops.spdp_matvec(x, sp[0], 0.0, backend="cuda")
            err = float((got.double() - expect.double()).norm() / expect.double().norm())
            if not err < 2e-2:
                raise SystemExit(f"{name} T={t} R={r}: relative error {err:.2e}")
            mm = int(tune("last_spdp_mm", -1))
            paths = {"cuBLAS": [lambda w=w_: F.linear(x, w) for w_ in w],
                     "spdp default": [lambda p=p: ops.spdp_matvec(x, p, 0.0, backend="cuda") for p in sp]}
            if a.balanced and mm:
                paths["generic (spdp_bal=2)"] = ("spdp_bal", 2)

            if others:
                paths["decode + cuBLAS"] = [lambda p=p: F.linear(x, ops.spdp_decode(p)) for p in sp]
                if t <= 16:
                    paths["matvec (spdp_mm=2)"] = ("spdp_mm", 2)
            res = {}
            for label, calls in paths.items():
                if isinstance(calls, tuple):  # the default call under another knob value
                    old = tune(*calls)
                    res[label], _ = time_graph([lambda p=p: ops.spdp_matvec(x, p, 0.0, backend="cuda") for p in sp])
                    tune(calls[0], old)
                else:
                    res[label], _ = time_graph(calls)
            base = res["cuBLAS"]
            row = {"shape": name, "T": t, "R": r, "dtype": str(dtype).split(".")[-1], "tensor_cores": mm, **res}
            rows.append(row)
            layer.setdefault(t, [0.0, 0.0])
            layer[t][0] += base
            layer[t][1] += res["spdp default"]
            cells = "  ".join(f"{lab} {us:8.2f} ({base / us:4.2f}x)" for lab, us in res.items() if lab != "cuBLAS")
            print(f"{name:20s} {row['dtype']:8s} R={r:<3d} T={t:<4d} tc={mm} cuBLAS {base:8.2f}  {cells}", flush=True)
        return layer

    total = {}
    for name, (n, k) in FUSED.items():
        for t, (b, s_) in run(name, n, k, 64, torch.float16, tokens, True).items():
            total.setdefault(t, [0.0, 0.0])
            total[t][0] += b
            total[t][1] += s_
    print("## one fused layer, fp16, R=64 (sum of the four calls): T, cuBLAS µs, spdp µs, cuBLAS/spdp")
    for t, (b, s_) in total.items():
        print(f"## layer T={t:<4d} cuBLAS {b:8.2f}  spdp {s_:8.2f}  {b / s_:4.2f}x")
        rows.append({"layer": True, "T": t, "cuBLAS": b, "spdp default": s_})
    for r in (32, 128):
        for name, (n, k) in FUSED.items():
            run(name, n, k, r, torch.float16, [32], False)
    old = tune("spdp_mm_rows", 8)
    print("## 8 rows per expansion unit (tune spdp_mm_rows=8)")
    for name, (n, k) in FUSED.items():
        run(name, n, k, 64, torch.float16, [8, 32], False)
    tune("spdp_mm_rows", old)
    for name, (n, k) in FUSED.items():
        run(name, n, k, 64, torch.bfloat16, [32], False)
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": gpu, "mm": rows}, indent=1))


def ncu_launches(a) -> None:
    from sparsekit import ops
    from sparsekit.formats import spdp

    tune = torch.ops.sparsekit_cuda.tune
    n, k, t = 12288, 4096, int(a.tokens or 32)
    w = rand_weight(n, k, 0.0 if a.balanced else 0.5, seed=0)
    w = prune_24_out(w, seed=500) if a.balanced else w
    sp = {key: (v.cuda() if key != "shape" else tuple(v.tolist())) for key, v in spdp.encode(w, 64).items()}
    x = (torch.randn((t, k), device="cuda") * 0.5).half()
    ops.spdp_matvec(x, sp, 0.0, backend="cuda")
    torch.cuda.synchronize()
    print(f"tensor cores {int(tune('last_spdp_mm', -1))}, split {int(tune('last_split', -1))}")
    ops.spdp_decode(sp, backend="cuda")  # the prefill path above SPDP_MM_MAX_TOKENS
    torch.cuda.synchronize()


def decode_sweep(a) -> None:
    """spdp_decode: the CUDA kernels (the tensor-core kernel's pipeline, default for 16-bit values and
    K % 8 == 0, and the one-pass kernel, tune("spdp_mm", 2)) against the Triton one (its default block
    configuration), R = 32/64/128, fp16, each checked bit-exact first. GB/s on bytes read + written."""
    from sparsekit import ops
    from sparsekit.formats import spdp

    rows = []
    print(f"## spdp_decode, fp16, 50% weights, {torch.cuda.get_device_name()} (µs; GB/s on bytes read + written)")
    for name, (n, k) in SHAPES.items():
        w = [rand_weight(n, k, 0.5, seed=s) for s in range(COPIES)]
        for r in (32, 64, 128):
            sp = [{key: (v.cuda() if key != "shape" else tuple(v.tolist())) for key, v in spdp.encode(x, r).items()}
                  for x in w]
            nbytes = sum(v.numel() * v.element_size() for key, v in sp[0].items() if key != "shape") + 2 * n * k
            for backend, knob in (("triton", 0), ("cuda", 0), ("cuda", 2)):
                old = torch.ops.sparsekit_cuda.tune("spdp_mm", knob)
                assert torch.equal(ops.spdp_decode(sp[0], backend=backend), w[0]), (name, r, backend)
                us, _ = time_graph([lambda p=p, b=backend: ops.spdp_decode(p, backend=b) for p in sp])
                torch.ops.sparsekit_cuda.tune("spdp_mm", old)
                label = backend if knob == 0 else "cuda one-pass (spdp_mm=2)"
                rows.append({"shape": name, "R": r, "backend": label, "us": us, "gbs": nbytes / us / 1e3})
                print(f"{name:12s} R={r:<3d} {label:6s}  {us:8.2f} µs  {nbytes / us / 1e3:7.0f} GB/s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "decode_sweep": rows}, indent=1))


if __name__ == "__main__":
    main()
