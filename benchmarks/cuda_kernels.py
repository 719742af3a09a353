"""Time the CUDA kernels against dense cuBLAS on Llama-2-7B linear shapes (run on the GPU machine).

Method (DESIGN.md section 7): each op runs on 8 copies of its weights in turn (so they do not sit in
the 60 MB L2), captured `ROUNDS` times in one CUDA graph; the graph is replayed and the time per op
is the median replay time over the ops in it. The dense baseline (`F.linear(x, W)`, cuBLAS) runs in
the same harness. Bytes touched count what the op must read (weights of active channels, their
bitmaps/offsets, x) and write (y); GB/s = bytes / time, next to the measured device copy bandwidth.

    python benchmarks/cuda_kernels.py [--quick] [--json OUT.json]
    python benchmarks/cuda_kernels.py --teal [--json OUT.json]   # teal at T=1: kernels, variants, sanity
    python benchmarks/cuda_kernels.py --quick --fused             # the launches of a fused layer
    python benchmarks/cuda_kernels.py --spdp [--fused]            # spdp at T=1: tile rows x variants x splits
    python benchmarks/cuda_kernels.py --l2pf 0,64,128 [--fused]   # teal at T=1 by L2 prefetch depth
    python benchmarks/cuda_kernels.py --trace [--fused]           # block timelines of the teal kernel
    python benchmarks/cuda_kernels.py --chain ";pdl=1;l2pf=64"    # a layer's 4 teal launches, per knob set

`--teal` times teal_matvec for one token on the three shapes: the default (matvec.cuh), the opt-in
one-token kernel (teal1.cuh, `teal1=1`) and its geometries, split and other variants, cuBLAS, the
fixed cost (nothing active), fp16 and bf16, plus one spdp and one spinfer configuration per shape
as a sanity check that nothing else moved.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = {"qo 4096->4096": (4096, 4096), "up 4096->11008": (11008, 4096), "down 11008->4096": (4096, 11008)}
# what the runtime launches once projections are fused (sparsekit/runtime/fuse.py), Llama-2-7B
FUSED_SHAPES = {"qkv 4096->12288": (12288, 4096), "gate/up 4096->22016": (22016, 4096),
                "o 4096->4096": (4096, 4096), "down 11008->4096": (4096, 11008)}
COPIES = 8
ROUNDS = 4


class tuned:
    """Set knobs of the CUDA kernels (torch.ops.sparsekit_cuda.tune) for a block."""

    def __init__(self, tune, knobs: dict):
        self.tune, self.knobs, self.old = tune, knobs, {}

    def __enter__(self):
        for key, value in self.knobs.items():
            self.old[key] = self.tune(key, value)

    def __exit__(self, *exc):
        for key, value in self.old.items():
            self.tune(key, value)


def fmt(knobs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


def time_graph(calls, replays: int = 25) -> tuple[float, float]:
    """Median and spread (max-min of the middle half) of microseconds per call, from graph replays."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(ROUNDS):
            for c in calls:
                c()
    graph.replay()
    torch.cuda.synchronize()
    per = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        per.append(a.elapsed_time(b) * 1e3 / (ROUNDS * len(calls)))
    per.sort()
    mid = per[len(per) // 4 : len(per) - len(per) // 4]
    return statistics.median(per), mid[-1] - mid[0]


def copy_bandwidth() -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus written."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * n / statistics.median(ts) / 1e9


def rand_weight(n: int, k: int, sparsity: float, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn((n, k), generator=g, device="cuda") * 0.02
    if sparsity > 0:
        w[torch.rand((n, k), generator=g, device="cuda") < sparsity] = 0
    return w.half()


def to_dev(packed: dict, dtype: torch.dtype) -> dict:
    out = {}
    for key, v in packed.items():
        if key == "shape":
            out[key] = v
        elif key == "values":
            out[key] = v.to(device="cuda", dtype=dtype)
        else:
            out[key] = v.cuda()
    return out


def clones(packed: dict) -> list[dict]:
    return [{k: (v.clone() if k != "shape" else v) for k, v in packed.items()} for _ in range(COPIES)]


def threshold(x: torch.Tensor, s2: float) -> float:
    return float(x.float().abs().flatten().quantile(s2)) if s2 > 0 else 0.0


def check(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    err = float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
    if not err < 2e-2:
        raise SystemExit(f"{what}: relative error {err:.2e} against the reference")


def ncu_launches() -> None:
    """fp16, 4096 -> 11008, 50% activation (and 50% weight) sparsity, two launches each: teal, spdp
    (tile rows 64) as by default (the staged kernel), spdp with the nibble kernel (tune("spdp_stage", 2))."""
    from sparsekit import ops
    from sparsekit.formats import spdp

    n, k = 11008, 4096
    w = rand_weight(n, k, 0.0, seed=0)
    x = torch.randn((1, k), device="cuda").half()
    thr = threshold(x, 0.5)
    wt = w.t().contiguous()
    packed = to_dev(spdp.encode(rand_weight(n, k, 0.5, seed=1), 64), torch.float16)
    tune = torch.ops.sparsekit_cuda.tune
    for _ in range(2):
        ops.teal_matvec(x, wt, thr)
    for stage in (0, 2):
        tune("spdp_stage", stage)
        for _ in range(2):
            ops.spdp_matvec(x, packed, thr)
    tune("spdp_stage", 0)
    torch.cuda.synchronize()


def tokens_at_half(t: int, k: int, dtype=torch.float16) -> torch.Tensor:
    """t random tokens of k channels, each zeroed below its own median |x| (50 % per token: the union of active
    channels grows with the tokens)."""
    x = torch.randn((t, k), device="cuda").to(dtype)
    thr_rows = torch.stack([row.float().abs().quantile(0.5) for row in x])
    return torch.where(x.float().abs() > thr_rows[:, None], x, torch.zeros_like(x))


def ncu_mm_launches(tokens: int) -> None:
    """The tensor-core kernel's FX variant (2:4-out weight in the fixed layout, fp16, R = 64) at `tokens` tokens
    with each token's own 50 % threshold, two launches per fused-layer shape (for ncu -k regex:spdp_mm)."""
    from sparsekit import ops
    from sparsekit.formats import spdp

    for n, k in FUSED_SHAPES.values():
        packed = to_dev(spdp.encode(prune_24_out(rand_weight(n, k, 0.0, seed=300), seed=301), 64), torch.float16)
        x = tokens_at_half(tokens, k)
        for _ in range(2):
            ops.spdp_matvec(x, packed | {"fixed": True}, 0.0)
    torch.cuda.synchronize()


def print_table(gpu: str, bw: float, rows: list[dict]) -> None:
    print(f"\n## {gpu}, copy {bw:.0f} GB/s", flush=True)
    print(f"{'shape':18s} {'dtype':9s} {'op':16s} {'config':34s} {'us':>8s} {'speedup':>8s} {'GB/s':>7s} {'%bw':>6s}")
    for r in rows:
        if r["variant"]:
            continue
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        print(f"{r['shape']:18s} {r['dtype']:9s} {r['op']:16s} {r['config']:34s} {r['us']:8.2f} {sp:>8s} "
              f"{r['gbs']:7.0f} {r['pct_bw']:6.1f}")


def dense_case(record, name: str, w16: list[torch.Tensor], dtype: torch.dtype):
    """The rotated weights in `dtype`, their teal layout, one random token, and cuBLAS's time on them
    (recorded as the shape's dense row)."""
    n, k = w16[0].shape
    ws = [w.to(dtype) for w in w16]
    wts = [w.t().contiguous() for w in ws]
    x = torch.randn((1, k), device="cuda").to(dtype)
    dense_us, sp = time_graph([lambda w=w: F.linear(x, w) for w in ws])
    record(name, dtype, "dense", "cuBLAS F.linear T=1", dense_us, sp, 2 * n * k + 2 * (n + k), dense_us)
    return ws, wts, x, dense_us


def teal_sweep(tune, record) -> None:
    """teal_matvec at T = 1: teal1 (automatic and variants), matvec.cuh, cuBLAS; spdp/spinfer sanity."""
    from sparsekit import ops
    from sparsekit.formats import spdp, spinfer
    from sparsekit.kernels import reference

    def soft_check(out, ref, what) -> str:
        try:
            check(out, ref, what)
            return ""
        except SystemExit as e:  # keep timing the other variants; the row says it failed
            print(f"CHECK FAILED: {e}", flush=True)
            return " WRONG"

    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        for dtype in (torch.float16, torch.bfloat16):
            ws, wts, x, dense_us = dense_case(record, name, w16, dtype)

            def teal(s2, knobs, label, variant, sel=False):
                thr = threshold(x, s2) if s2 < 1 else 1e9
                active = int((x.abs() > thr).sum()) if s2 > 0 else k
                nbytes = 2 * active * n + 2 * (n + k)
                with tuned(tune, knobs):
                    if sel:
                        xs, idx, nnz = ops.select(x, thr)
                        label += soft_check(ops.teal_matvec_sel(xs, idx, nnz, wts[0]),
                                            reference.teal_matvec(x, wts[0], thr), label)
                        us, spr = time_graph([lambda wt=wt: ops.teal_matvec_sel(xs, idx, nnz, wt) for wt in wts])
                    else:
                        if s2 < 1:
                            label += soft_check(ops.teal_matvec(x, wts[0], thr), reference.teal_matvec(x, wts[0], thr),
                                                label)
                        us, spr = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                    t1 = int(tune("last_teal1"))
                record(name, dtype, "teal_matvec_sel" if sel else "teal_matvec", label, us, spr, nbytes, dense_us,
                       extra=dict(teal1=t1, knobs=knobs), variant=variant)

            for s2 in (0.0, 0.5, 0.7):
                teal(s2, {}, f"s2={s2}", False)
            teal(0.5, {}, "s2=0.5", False, sel=True)
            if dtype == torch.float16:
                for s2 in (0.0, 0.5, 0.7):  # the opt-in one-token kernel (teal1.cuh)
                    teal(s2, {"teal1": 1}, f"s2={s2} teal1", False)
                teal(0.5, {"teal1": 1}, "s2=0.5 teal1", False, sel=True)
                teal(1.0, {}, "nothing active", True)
                teal(1.0, {"teal1": 1}, "nothing active teal1", True)
                teal(1.0, {"pdl": 1}, "nothing active pdl=1", True)
                for s2 in (0.0, 0.5):
                    for knobs in ({"split": 4}, {"split": 8}, {"pdl": 1}, {"pipe": 1},
                                  {"teal1": 1, "teal1_threads": 512, "teal1_lpr": 4},
                                  {"teal1": 1, "teal1_threads": 1024, "teal1_lpr": 4},
                                  {"teal1": 1, "teal1_threads": 512, "teal1_lpr": 8}):
                        teal(s2, knobs, f"s2={s2} {fmt(knobs)}", True)
        # sanity: one spdp and one spinfer configuration (fp16), against the numbers in NOTES.md (CUDA kernels)
        x = torch.randn((1, k), device="cuda").half()
        ws = [w.half() for w in w16]
        dense_us, _ = time_graph([lambda w=w: F.linear(x, w) for w in ws])
        thr = threshold(x, 0.5)
        w50 = rand_weight(n, k, 0.5, seed=100)
        packed = to_dev(spdp.encode(w50, 64), torch.float16)
        check(ops.spdp_matvec(x, packed, thr), reference.spdp_matvec(x, packed, thr), f"spdp {name}")
        cps = clones(packed)
        us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p, thr) for p in cps])
        record(name, torch.float16, "spdp_matvec", "s1=0.5 s2=0.5 R=64", us, sp, 0, dense_us)
        del cps
        packed = to_dev(spinfer.encode(w50), torch.float16)
        xt = torch.randn((16, k), device="cuda").half()
        d_us, _ = time_graph([lambda w=w: F.linear(xt, w) for w in ws])
        check(ops.spinfer_matmul(xt, packed), reference.spinfer_matmul(xt, packed), f"spinfer {name}")
        cps = clones(packed)
        us, sp = time_graph([lambda p=p: ops.spinfer_matmul(xt, p) for p in cps])
        record(name, torch.float16, "spinfer_matmul", f"s1=0.5 T=16 (dense {d_us:.1f}us)", us, sp, 0, d_us)
        del cps, ws, w16
        torch.cuda.empty_cache()


def l2pf_sweep(tune, record, values: list[int], out_dir: str | None) -> None:
    """teal_matvec at T = 1 with `l2pf` channels' row segments prefetched into L2 per block (fp16 at
    activation sparsity 0 / 0.5 / 0.7, bf16 at 0.5); prints and writes (to OUT_DIR/l2pf_best) the value with
    the least total time at 0.5 over the shapes."""
    import os

    from sparsekit import ops
    from sparsekit.kernels import reference

    total: dict[int, float] = {v: 0.0 for v in values}
    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        for dtype in (torch.float16, torch.bfloat16):
            ws, wts, x, dense_us = dense_case(record, name, w16, dtype)
            for s2 in ((0.0, 0.5, 0.7) if dtype == torch.float16 else (0.5,)):
                thr = threshold(x, s2)
                active = int((x.abs() > thr).sum()) if s2 > 0 else k
                nbytes = 2 * active * n + 2 * (n + k)
                for v in values:
                    with tuned(tune, {"l2pf": v}):
                        check(ops.teal_matvec(x, wts[0], thr), reference.teal_matvec(x, wts[0], thr), f"l2pf={v}")
                        us, spr = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                    record(name, dtype, "teal_matvec", f"s2={s2} l2pf={v}", us, spr, nbytes, dense_us,
                           extra=dict(l2pf=v), variant=True)
                    if s2 == 0.5:
                        total[v] += us
        del ws, wts, w16
        torch.cuda.empty_cache()
    best = min(values, key=lambda v: total[v])
    print("l2pf total us at s2=0.5 (fp16 + bf16, all shapes): "
          + ", ".join(f"{v}: {total[v]:.2f}" for v in values) + f"; BEST l2pf={best}", flush=True)
    if out_dir:
        with open(os.path.join(out_dir, "l2pf_best"), "w") as f:
            f.write(str(best))


TRACE_SLOTS = ("g0", "c0", "list", "stream", "red", "c1", "g1", "info")  # sk::TraceSlot, common.cuh


def summarize_trace(rec: torch.Tensor, row_bytes: int) -> dict:
    """One traced launch's block timelines ([blocks, 8] int64 as the PROBE kernel writes them) as
    phase times. Per-block phases come from the SM clock (cycles, converted with the clock rate the
    blocks themselves show against the global timer); start/end skews and the span from the global
    timer (ns). `row_bytes`: weight bytes one block reads per active channel (its row segment)."""
    r = rec.to(torch.float64).cpu()
    col = {name: r[:, i] for i, name in enumerate(TRACE_SLOTS)}
    info = rec[:, 7].cpu()
    sm = (info & 0xFFFFFFFF).to(torch.int64)
    rows = (info >> 32).to(torch.int64)
    g_dur = (col["g1"] - col["g0"]).clamp_min(1.0)
    ghz = float(((col["c1"] - col["c0"]) / g_dur).median())  # cycles per ns
    to_us = 1.0 / (ghz * 1e3)

    def stat(x):
        return dict(med=round(float(x.median()) * to_us, 2), max=round(float(x.max()) * to_us, 2))

    span_ns = float(col["g1"].max() - col["g0"].min())
    stream = col["stream"] - col["list"]
    per_sm = torch.bincount(sm)
    load = per_sm[sm]  # blocks that shared each block's SM
    by_load = {int(n): dict(blocks=int((load == n).sum()), med=round(float(stream[load == n].median()) * to_us, 2),
                            rows=int(rows[load == n].median()))
               for n in torch.unique(load)}
    per_sm = per_sm[per_sm > 0]
    last = int(col["g1"].argmax())
    return dict(
        blocks=int(r.shape[0]), clock_ghz=round(ghz, 3), span_us=round(span_ns / 1e3, 2),
        start_skew_us=round(float(col["g0"].max() - col["g0"].min()) / 1e3, 2),
        end_skew_us=round(float(col["g1"].max() - col["g1"].min()) / 1e3, 2),
        prologue=stat(col["list"] - col["c0"]), stream=stat(stream),
        reduce=stat(col["red"] - col["stream"]), cluster=stat(col["c1"] - col["red"]),
        total=stat(col["c1"] - col["c0"]),
        rows=dict(min=int(rows.min()), med=int(rows.median()), max=int(rows.max())),
        blocks_per_sm=dict(min=int(per_sm.min()), max=int(per_sm.max()), sms=int(per_sm.numel())),
        stream_by_sm_load=by_load,
        gbs=round(float(rows.sum()) * row_bytes / span_ns, 1),
        last_block=dict(start_us=round(float(col["g0"][last] - col["g0"].min()) / 1e3, 2),
                        rows=int(rows[last]), total_us=round(float(col["c1"][last] - col["c0"][last]) * to_us, 2)),
    )


def trace_launches(knob_sets: list[dict], reps: int = 2) -> list[dict]:
    """Block timelines of the default teal kernel (its PROBE twin) at T = 1 on the current SHAPES, fp16,
    activation sparsity 0.5 and 0, per knob set: each traced launch runs after a 512 MB copy has
    flushed L2; the graph-replayed time of the default kernel with the same knobs comes with it.
    Prints a line per traced launch, then a short table (the first launch of each case)."""
    from sparsekit import ops
    from sparsekit.kernels import reference

    tune = torch.ops.sparsekit_cuda.tune
    buf = torch.zeros((8192, len(TRACE_SLOTS)), dtype=torch.int64, device="cuda")
    flush_a = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")
    flush_b = torch.empty_like(flush_a)

    def traced(x, w_t, thr):
        buf.zero_()
        flush_b.copy_(flush_a)
        torch.ops.sparsekit_cuda.trace(buf)
        try:
            y = ops.teal_matvec(x, w_t, thr)
            torch.cuda.synchronize()
        finally:
            torch.ops.sparsekit_cuda.trace(None)
        return y, buf[: int((buf[:, 0] != 0).sum())].clone()

    out = []
    for name, (n, k) in SHAPES.items():
        wts = [rand_weight(n, k, 0.0, seed=s).half().t().contiguous() for s in range(COPIES)]
        x = torch.randn((1, k), device="cuda").half()
        for s2 in (0.5, 0.0):
            thr = threshold(x, s2)
            check(ops.teal_matvec(x, wts[0], thr), reference.teal_matvec(x, wts[0], thr), f"trace {name}")
            for knobs in knob_sets:
                with tuned(tune, knobs):
                    plain = ops.teal_matvec(x, wts[0], thr)
                    split = int(knobs.get("split", 0)) or int(tune("last_split", -1))
                    us, _ = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                    for rep in range(reps):
                        y, rec = traced(x, wts[0], thr)
                        if not torch.equal(y, plain):
                            raise SystemExit(f"trace {name}: the PROBE kernel's output differs from the default kernel's")
                        sm = summarize_trace(rec, min(n, 128) * 2)  # fp16 row segment: 16 lanes x 16 bytes
                        sm.update(shape=name, s2=s2, rep=rep, split=split, knobs=knobs, graph_us=round(us, 2))
                        out.append(sm)
                        print(trace_line(sm), flush=True)
        del wts
    print(trace_table(out))
    return out


def trace_table(out: list[dict]) -> str:
    """The short table of trace_launches: the first traced launch of each case."""
    lines = ["", "## teal block timelines (T=1, fp16, cold L2; phases per block, median/max us)",
             f"{'shape':20s} {'s2':>3s} {'knobs':10s} {'S':>2s} {'graph':>6s} {'span':>6s} {'prolog':>9s} {'stream':>11s} "
             f"{'reduce':>9s} {'cluster':>9s} {'endskew':>7s} {'rows min/max':>12s} {'blk/SM':>6s} {'SMs':>4s}"]
    for sm in out:
        if sm["rep"] == 0:
            lines.append(
                f"{sm['shape']:20s} {sm['s2']:3.1f} {fmt(sm['knobs']) or 'default':10s} {sm['split']:2d} "
                f"{sm['graph_us']:6.2f} {sm['span_us']:6.2f} {sm['prologue']['med']:4.2f}/{sm['prologue']['max']:4.2f} "
                f"{sm['stream']['med']:5.2f}/{sm['stream']['max']:5.2f} {sm['reduce']['med']:4.2f}/{sm['reduce']['max']:4.2f} "
                f"{sm['cluster']['med']:4.2f}/{sm['cluster']['max']:4.2f} {sm['end_skew_us']:7.2f} "
                f"{sm['rows']['min']:5d}/{sm['rows']['max']:<6d} {sm['blocks_per_sm']['min']}-{sm['blocks_per_sm']['max']:<4d} "
                f"{sm['blocks_per_sm']['sms']:4d}")
    return "\n".join(lines)


def trace_line(sm: dict) -> str:
    return (f"{sm['shape']:20s} s2={sm['s2']:.1f} {fmt(sm['knobs']) or 'default':8s} S={sm['split']} graph {sm['graph_us']:6.2f} us | "
            f"blocks={sm['blocks']:4d} span {sm['span_us']:6.2f} us start skew {sm['start_skew_us']:5.2f} "
            f"end skew {sm['end_skew_us']:5.2f} | per block (med/max us) "
            f"prologue {sm['prologue']['med']:.2f}/{sm['prologue']['max']:.2f} "
            f"stream {sm['stream']['med']:.2f}/{sm['stream']['max']:.2f} "
            f"reduce {sm['reduce']['med']:.2f}/{sm['reduce']['max']:.2f} "
            f"cluster {sm['cluster']['med']:.2f}/{sm['cluster']['max']:.2f} | rows "
            f"{sm['rows']['min']}/{sm['rows']['med']}/{sm['rows']['max']} blocks/SM "
            f"{sm['blocks_per_sm']['min']}-{sm['blocks_per_sm']['max']} on {sm['blocks_per_sm']['sms']} SMs, stream by SM load "
            + " ".join(f"{n}:{v['blocks']}x{v['med']:.2f}us/{v['rows']}r" for n, v in sm['stream_by_sm_load'].items())
            + f" | {sm['gbs']:.0f} GB/s | last block starts +{sm['last_block']['start_us']:.2f} us, "
            f"{sm['last_block']['rows']} rows, {sm['last_block']['total_us']:.2f} us | {sm['clock_ghz']:.2f} GHz")


def parse_knob_sets(text: str) -> list[dict]:
    """'l2pf=64;pdl=1,l2pf=64' -> [{'l2pf': 64}, {'pdl': 1, 'l2pf': 64}]; an empty set is the default."""
    sets = []
    for part in text.split(";"):
        knobs = {}
        for kv in filter(None, (p.strip() for p in part.split(","))):
            key, _, value = kv.partition("=")
            knobs[key.strip()] = int(value)
        sets.append(knobs)
    return sets


def layer_chain(tune, record, knob_sets: list[dict], s2: float = 0.5) -> None:
    """The four teal launches of a fused Llama-2-7B decoder layer back to back, each reading the one
    before (qkv -> o on q -> gate/up -> down with the SwiGLU product fused), against the same chain in
    cuBLAS (plus its silu*up kernel), at activation sparsity s2 at every site. Times a whole layer per
    knob set: this is where launch overlap (pdl) and prefetch (l2pf) can show, since each kernel
    follows another of ours as it would if the layer's glue were fused too."""
    from sparsekit import ops
    from sparsekit.kernels import reference

    d, f = 4096, 11008
    for dtype in (torch.float16, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(11)

        def w(k, n):  # [K, N] (teal layout), scaled so every site's values stay near 1
            return (torch.randn(k, n, device="cuda", generator=g) * k ** -0.5).to(dtype)

        layers = [dict(qkv=w(d, 3 * d), o=w(d, d), gu=w(d, 2 * f), down=w(f, d)) for _ in range(COPIES)]
        x = torch.randn((1, d), device="cuda", generator=g).to(dtype)
        nbytes = 0
        for L in layers:  # thresholds at each site from the chain's own inputs (eager, once)
            L["t_qkv"] = float(torch.quantile(x.abs().float(), s2))
            q = reference.teal_matvec(x, L["qkv"], L["t_qkv"])[:, :d]
            L["t_o"] = float(torch.quantile(q.abs().float(), s2))
            o = reference.teal_matvec(q, L["o"], L["t_o"])
            L["t_gu"] = float(torch.quantile(o.abs().float(), s2))
            gu = reference.teal_matvec(o, L["gu"], L["t_gu"])
            h = reference.silu_mul(gu)
            L["t_down"] = float(torch.quantile(h.abs().float(), s2))
            active = [(x.abs() > L["t_qkv"]).sum(), (q.abs() > L["t_o"]).sum(), (o.abs() > L["t_gu"]).sum(),
                      (h.abs() > L["t_down"]).sum()]
            n_out = [3 * d, d, 2 * f, d]
            nbytes += sum(2 * int(a) * n + 2 * n for a, n in zip(active, n_out)) + 2 * (d + d + d + 2 * f)
        nbytes //= COPIES
        dense = [dict(qkv=L["qkv"].t().contiguous(), o=L["o"].t().contiguous(), gu=L["gu"].t().contiguous(),
                      down=L["down"].t().contiguous()) for L in layers]

        def dense_layer(D):
            qkv = F.linear(x, D["qkv"])
            o = F.linear(qkv[:, :d], D["o"])
            gu = F.linear(o, D["gu"])
            return F.linear(F.silu(gu[:, :f]) * gu[:, f:], D["down"])

        def teal_layer(L, stages=False):
            qkv = ops.teal_matvec(x, L["qkv"], L["t_qkv"])
            o = ops.teal_matvec(qkv[:, :d], L["o"], L["t_o"])
            gu = ops.teal_matvec(o, L["gu"], L["t_gu"])
            out = ops.teal_matvec_glu(gu, L["down"], L["t_down"])
            return (qkv, o, gu, out) if stages else out

        def check_layer(L, what):  # each launch against the reference on the inputs it really got
            qkv, o, gu, out = teal_layer(L, stages=True)
            check(qkv, reference.teal_matvec(x, L["qkv"], L["t_qkv"]), what + " qkv")
            check(o, reference.teal_matvec(qkv[:, :d], L["o"], L["t_o"]), what + " o")
            check(gu, reference.teal_matvec(o, L["gu"], L["t_gu"]), what + " gate/up")
            check(out, reference.teal_matvec_glu(gu, L["down"], L["t_down"]), what + " down")

        dense_us, sp = time_graph([lambda D=D: dense_layer(D) for D in dense])
        dense_bytes = 2 * d * (3 * d + d + 2 * f) + 2 * f * d
        record("layer chain", dtype, "dense", "cuBLAS x4 + silu*up", dense_us, sp, dense_bytes, dense_us)
        for knobs in knob_sets:
            with tuned(tune, knobs):
                check_layer(layers[0], f"layer chain {fmt(knobs)}")
                us, spr = time_graph([lambda L=L: teal_layer(L) for L in layers])
            record("layer chain", dtype, "teal x4", f"s2={s2} {fmt(knobs) or 'default'}", us, spr, nbytes, dense_us,
                   extra=dict(knobs=knobs), variant=True)
        del layers, dense
        torch.cuda.empty_cache()


def spdp_touched(packed: dict, mask: torch.Tensor, n: int, k: int, r: int) -> int:
    """Bytes an spdp matvec must touch: active columns' values, bitmaps and offsets, x and y (fp16/bf16)."""
    nt = -(-n // r)
    counts = (packed["offsets"][1:] - packed["offsets"][:-1]).reshape(nt, k).to(torch.int64)
    return int((counts[:, mask].sum() * 2).item()) + int(mask.sum()) * nt * (r // 8 + 4) + 2 * (n + k)


def spdp_sweep(tune, record) -> None:
    """spdp_matvec at T = 1: tile rows 32/64/128 x the default (staged), nibble, plain and deep kernels x forced
    splits, cuBLAS."""
    from sparsekit import ops
    from sparsekit.formats import spdp
    from sparsekit.kernels import reference

    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        for s1 in (0.5, 0.7):
            wsp = rand_weight(n, k, s1, seed=100)
            for dtype in (torch.float16, torch.bfloat16):
                ws = [w.to(dtype) for w in w16]
                x = torch.randn((1, k), device="cuda").to(dtype)
                dense_us, sp = time_graph([lambda w=w: F.linear(x, w) for w in ws])
                if s1 == 0.5:
                    record(name, dtype, "dense", "cuBLAS F.linear T=1", dense_us, sp, 2 * n * k + 2 * (n + k), dense_us)
                thr = threshold(x, 0.5)
                mask = (x.abs() > thr).flatten()
                for r in (32, 64, 128):
                    packed = to_dev(spdp.encode(wsp, r), dtype)
                    touched = spdp_touched(packed, mask, n, k, r)
                    cps = clones(packed)
                    expect = reference.spdp_matvec(x, packed, thr)
                    # default (the staged kernel for 16-bit values), then the nibble, plain and deep kernels
                    grid = [{}, {"spdp_stage": 2}, {"spdp_stage": 2, "spdp_nib": 2, "spdp_deep": 2},
                            {"spdp_stage": 2, "spdp_nib": 2, "spdp_deep": 1}]
                    if dtype == torch.float16 and s1 == 0.5:
                        grid += [{"split": sv} for sv in (1, 2, 3, 4, 6, 8)]
                    for knobs in grid:
                        with tuned(tune, knobs):
                            check(ops.spdp_matvec(x, packed, thr), expect, f"spdp {name} R={r} {fmt(knobs)}")
                            us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p, thr) for p in cps])
                            record(name, dtype, "spdp_matvec", f"s1={s1} s2=0.5 R={r} {fmt(knobs)}".strip(), us, sp,
                                   touched, dense_us, variant="split" in knobs)
                    del cps
                del ws
        del w16
        torch.cuda.empty_cache()


def prune_24_out(w: torch.Tensor, seed: int) -> torch.Tensor:
    """2 of every 4 consecutive rows of each column set to +0.0 at random (2:4 over output rows)."""
    n, k = w.shape
    w = torch.where(w == 0, torch.full_like(w, 1e-3), w)  # fp16 underflow zeros would break the pattern
    g = torch.Generator(device="cuda").manual_seed(seed)
    keep = torch.rand((n // 4, 4, k), generator=g, device="cuda").argsort(dim=1)[:, :2]
    mask = torch.zeros((n // 4, 4, k), dtype=torch.bool, device="cuda").scatter_(1, keep, True)
    return w.masked_fill(~mask.reshape(n, k), 0.0)


def balanced_sweep(tune, record, fix_splits: bool = False) -> None:
    """spdp_matvec at T = 1, s2 = 0.5, on weights pruned 2:4 over output rows: declared in the fixed layout
    (the V = 5 kernel, as SparseLinear runs it), the staged kernels' balanced path, the variants' own loops
    (spdp_bal=2), and unstructured 50 % weights, tile rows 32/64/128, cuBLAS."""
    from sparsekit import ops
    from sparsekit.formats import spdp
    from sparsekit.kernels import reference

    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        w24 = prune_24_out(rand_weight(n, k, 0.0, seed=300), seed=301)
        wun = rand_weight(n, k, 0.5, seed=100)
        for dtype in ((torch.float16,) if fix_splits else (torch.float16, torch.bfloat16)):
            ws = [w.to(dtype) for w in w16]
            x = torch.randn((1, k), device="cuda").to(dtype)
            dense_us, sp = time_graph([lambda w=w: F.linear(x, w) for w in ws])
            record(name, dtype, "dense", "cuBLAS F.linear T=1", dense_us, sp, 2 * n * k + 2 * (n + k), dense_us)
            thr = threshold(x, 0.5)
            mask = (x.abs() > thr).flatten()
            cases = ((("2:4-out", w24, [("fixed", {})] + [("fixed", {"split": v}) for v in range(1, 9)]),)
                     if fix_splits else
                     (("2:4-out", w24, [("fixed", {}), ("", {}), ("", {"spdp_bal": 2})]), ("unstructured", wun, [("", {})])))
            for r in ((64, 128) if fix_splits else (32, 64, 128)):
                for label, w, grid in cases:
                    packed = to_dev(spdp.encode(w, r), dtype)
                    touched = spdp_touched(packed, mask, n, k, r)
                    cps = clones(packed)
                    expect = reference.spdp_matvec(x, packed, thr)
                    for decl, knobs in grid:
                        if decl:
                            assert spdp.fixed_layout(packed), f"{name} R={r}: not in the fixed layout"
                        extra = {"fixed": True} if decl else {}
                        what = f"{label} R={r} {decl} {fmt(knobs)}".replace("  ", " ").strip()
                        with tuned(tune, knobs):
                            check(ops.spdp_matvec(x, packed | extra, thr), expect, f"spdp {name} {what}")
                            ran = torch.ops.sparsekit_cuda.tune("last_spdp_fix", -1)
                            assert ran == (1 if decl else 0), f"{what}: last_spdp_fix = {ran}"
                            us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p | extra, thr) for p in cps])
                            record(name, dtype, "spdp_matvec", what, us, sp, touched, dense_us)
                    del cps
            del ws
        del w16
        torch.cuda.empty_cache()


def fix_tokens_sweep(tune, record, tokens=(1, 2, 3, 4), knob_sets=None) -> None:
    """A few tokens on a 2:4-out weight (fp16, R = 64, each token's own 50 % threshold, so the union of active
    channels grows): the fixed-layout kernel (its 4-token instantiation from 2 tokens; spdp_mm=2 keeps the
    tensor-core kernel off; up to 4 tokens) against the tensor-core kernel (the default from 4 tokens) on the
    weight undeclared and declared in the fixed layout (its FX variant), and cuBLAS. ``knob_sets``: only the FX
    variant (from 4 tokens) under each set of knobs (--mm-splits: {"split": S} each), and cuBLAS."""
    from sparsekit import ops
    from sparsekit.formats import spdp
    from sparsekit.kernels import reference

    dtype, r = torch.float16, 64
    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s).to(dtype) for s in range(COPIES)]
        w24 = prune_24_out(rand_weight(n, k, 0.0, seed=300), seed=301)
        packed = to_dev(spdp.encode(w24, r), dtype)
        assert spdp.fixed_layout(packed)
        cps = clones(packed)
        for t in tokens:
            x = tokens_at_half(t, k, dtype)
            dense_us, sp = time_graph([lambda w=w: F.linear(x, w) for w in w16])
            record(name, dtype, "dense", f"cuBLAS T={t}", dense_us, sp, 2 * n * k, dense_us)
            expect = reference.spdp_matvec(x, packed, 0.0)
            if knob_sets is not None:  # only the FX variant (tensor cores from 4 tokens), per knob set
                cases = [(f"tensor cores fixed {','.join(f'{a}={b}' for a, b in ks.items()) or 'default'}",
                          {"fixed": True}, ks) for ks in knob_sets] if t >= 4 else []
            else:
                cases = [("fixed", {"fixed": True}, {"spdp_mm": 2})] if t <= 4 else []
                cases.append(("tensor cores", {}, {}))
                if t >= 4:
                    cases.append(("tensor cores fixed", {"fixed": True}, {}))
                if t <= 4:
                    cases.append(("checked path", {}, {"spdp_mm": 2}))
            for what, extra, knobs in cases:
                with tuned(tune, knobs):
                    check(ops.spdp_matvec(x, packed | extra, 0.0), expect, f"{name} T={t} {what}")
                    ran = (int(tune("last_spdp_fix", -1)), int(tune("last_spdp_mm", -1)))
                    us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p | extra, 0.0) for p in cps])
                    record(name, dtype, "spdp_matvec", f"T={t} {what} (fix,mm)={ran}", us, sp, 2 * n * k, dense_us)
        del cps, w16
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fp16 only, no variant sweeps")
    ap.add_argument("--teal", action="store_true", help="only teal at T=1 (kernels and variants), spdp/spinfer sanity")
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--ncu", action="store_true", help="only launch teal and spdp twice each (for ncu)")
    ap.add_argument("--fused", action="store_true", help="the shapes of a fused layer (q/k/v and gate/up as one)")
    ap.add_argument("--spdp", action="store_true", help="only spdp at T=1: tile rows x variants x splits")
    ap.add_argument("--balanced", action="store_true",
                    help="only spdp at T=1 on weights pruned 2:4 over output rows (the balanced path) vs unstructured")
    ap.add_argument("--fix-tokens", nargs="?", const="1,2,3,4", default=None,
                    help="only these token counts (default 1,2,3,4) on 2:4-out weights: the fixed-layout kernels "
                    "against tensor cores and cuBLAS")
    ap.add_argument("--mm-splits", default=None,
                    help="with --fix-tokens: only the tensor-core FX variant at these forced splits, e.g. 0,2,4,8")
    ap.add_argument("--mm-knobs", default=None,
                    help="with --fix-tokens: only the tensor-core FX variant under these knob sets, e.g. ';spdp_mm_strips=1'")
    ap.add_argument("--fix-splits", action="store_true",
                    help="only the fixed-layout spdp kernel (2:4-out, fp16) at every forced channel-slice count")
    ap.add_argument("--l2pf", default=None, help="only teal at T=1 with these L2 prefetch depths, e.g. 0,32,64,128")
    ap.add_argument("--trace", action="store_true",
                    help="only block timelines of the teal kernel (prologue, stream, reductions, skews) per shape")
    ap.add_argument("--trace-knobs", default="", help="with --trace: knob sets to trace, e.g. ';split=4;split=2'")
    ap.add_argument("--chain", default=None,
                    help="only a fused layer's four teal launches back to back, per knob set, e.g. ';pdl=1;pdl=1,l2pf=64'")
    ap.add_argument("--ncu-mm", type=int, default=None, metavar="T",
                    help="only launch the tensor-core FX variant at T tokens on the fused shapes, twice each (for ncu)")
    args = ap.parse_args()
    if args.ncu_mm:
        return ncu_mm_launches(args.ncu_mm)
    if args.fused:
        SHAPES.clear()
        SHAPES.update(FUSED_SHAPES)
    if args.ncu:
        return ncu_launches()

    from sparsekit import _ext, ops
    from sparsekit.formats import spdp, spinfer
    from sparsekit.kernels import reference

    assert _ext.has_cuda(), f"the CUDA kernels are not built ({_ext.reason})"
    tune = torch.ops.sparsekit_cuda.tune
    gpu = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"# {gpu}; device copy {bw:.0f} GB/s; torch {torch.__version__}", file=sys.stderr)
    rows: list[dict] = []

    def record(shape, dtype, op, config, us, spread, nbytes, dense_us, extra=None, variant=False):
        row = dict(shape=shape, dtype=str(dtype).replace("torch.", ""), op=op, config=config, us=round(us, 2),
                   spread_us=round(spread, 2), gbs=round(nbytes / us / 1e3, 1), pct_bw=round(100 * nbytes / us / 1e3 / bw, 1),
                   speedup=round(dense_us / us, 3) if dense_us else None, split=int(tune("last_split")))
        row.update(extra or {})
        row["variant"] = variant
        rows.append(row)
        print(f"{shape:18s} {row['dtype']:9s} {op:16s} {config:26s} {us:8.2f} us  x{row['speedup'] or 0:5.2f}  "
              f"{row['gbs']:7.0f} GB/s ({row['pct_bw']:5.1f}%) S={row['split']}", file=sys.stderr, flush=True)

    # fixed costs of one graph node: a one-element torch kernel, and cuBLAS on a tiny matrix
    tiny = torch.zeros(1, device="cuda")
    us, sp = time_graph([lambda: tiny.add_(1.0)] * COPIES)
    record("diag", torch.float32, "add_ (1 elem)", "graph node", us, sp, 8, None, variant=True)
    wt_small = [torch.randn(64, 64, device="cuda").half() for _ in range(COPIES)]
    xs_small = torch.randn(1, 64, device="cuda").half()
    us, sp = time_graph([lambda w=w: F.linear(xs_small, w) for w in wt_small])
    record("diag", torch.float16, "dense", "cuBLAS 64x64", us, sp, 8192, None, variant=True)

    def finish(title: str) -> None:
        """JSON, then the variants one line each, then the short table last."""
        dump(args.json, gpu, bw, rows)
        print(f"\n## {title}, {gpu}", flush=True)
        for r in rows:
            if r["variant"]:
                print(f"{r['shape']:18s} {r['op']:16s} {r['config']:34s} {r['us']:8.2f} x{r['speedup'] or 0:5.2f} "
                      f"{r['pct_bw']:5.1f}% S={r['split']}" + (f" teal1={r['teal1']}" if "teal1" in r else ""))
        print_table(gpu, bw, rows)

    if args.fix_tokens:
        fix_tokens_sweep(tune, record, tuple(int(t) for t in args.fix_tokens.split(",")),
                         [{"split": int(v)} for v in args.mm_splits.split(",")] if args.mm_splits
                         else parse_knob_sets(args.mm_knobs) if args.mm_knobs is not None else None)
        return finish("spdp 2:4-out, a few tokens: fixed-layout kernel, tensor cores, cuBLAS (fp16, R=64, s2=0.5 per token)")
    if args.fix_splits:
        balanced_sweep(tune, record, fix_splits=True)
        return finish("spdp fixed layout, forced channel slices (fp16, 2:4-out, s1=0.5, s2=0.5, T=1)")
    if args.balanced:
        balanced_sweep(tune, record)
        return finish("spdp, 2:4 over output rows vs unstructured (s1=0.5, s2=0.5, T=1)")
    if args.spdp:
        spdp_sweep(tune, record)
        return finish("forced splits (fp16, s1=0.5, T=1)")
    if args.trace:
        traces = trace_launches(parse_knob_sets(args.trace_knobs))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(gpu=gpu, copy_gbs=bw, traces=traces), f, indent=1)
        return
    if args.chain is not None:
        layer_chain(tune, record, parse_knob_sets(args.chain))
        return finish("a fused layer's teal launches back to back (T=1)")
    if args.l2pf:
        l2pf_sweep(tune, record, [int(v) for v in args.l2pf.split(",")], os.environ.get("OUT"))
        return finish("L2 prefetch depths (T=1)")
    if args.teal:
        teal_sweep(tune, record)
        return finish("variants (fp16, T=1)")

    dtypes = [torch.float16] if args.quick else [torch.float16, torch.bfloat16]
    for name, (n, k) in SHAPES.items():
        w16 = [rand_weight(n, k, 0.0, seed=s) for s in range(COPIES)]
        w50 = rand_weight(n, k, 0.5, seed=100)
        enc_spdp = {r: spdp.encode(w50, r) for r in (32, 64, 128)}
        enc_spi = {s1: spinfer.encode(rand_weight(n, k, s1, seed=200)) for s1 in (0.5, 0.7)}
        for dtype in dtypes:
            ws, wts, x, dense_us = dense_case(record, name, w16, dtype)

            for s2 in ((0.0, 0.5, 0.7) if dtype == torch.float16 else (0.5,)):
                thr = threshold(x, s2)
                active = int((x.abs() > thr).sum()) if s2 > 0 else k
                check(ops.teal_matvec(x, wts[0], thr), reference.teal_matvec(x, wts[0], thr), f"teal {name}")
                us, sp = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                record(name, dtype, "teal_matvec", f"s2={s2}", us, sp, 2 * active * n + 2 * (n + k), dense_us)
            thr = threshold(x, 0.5)
            active = int((x.abs() > thr).sum())
            xs, idx, nnz = ops.select(x, thr)
            us, sp = time_graph([lambda wt=wt: ops.teal_matvec_sel(xs, idx, nnz, wt) for wt in wts])
            record(name, dtype, "teal_matvec_sel", "s2=0.5", us, sp, 2 * active * n + 2 * (n + k), dense_us)
            us, sp = time_graph([lambda: ops.select(x, thr)] * COPIES)
            record(name, dtype, "select", f"K={k}", us, sp, 4 * k + 4 * k, None)
            if dtype == torch.float16 and not args.quick:
                for knobs in ({"pipe": 1}, {"pipe": 1, "pdl": 1}, {"pdl": 1}, {"teal_lpr": 32}):
                    for s2v in (0.0, 0.5):
                        thv = threshold(x, s2v)
                        act = int((x.abs() > thv).sum()) if s2v > 0 else k
                        with tuned(tune, knobs):
                            us, sp = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thv) for wt in wts])
                        record(name, dtype, "teal_matvec", f"s2={s2v} {fmt(knobs)}", us, sp,
                               2 * act * n + 2 * (n + k), dense_us, variant=True)
                if n == k:
                    for split in (2, 4):
                        with tuned(tune, {"split": split, "pipe": 1}):
                            us, sp = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, thr) for wt in wts])
                        record(name, dtype, "teal_matvec", f"s2=0.5 split={split} pipe=1", us, sp,
                               2 * active * n + 2 * (n + k), dense_us, variant=True)
                # fixed cost: nothing active (no weight is read)
                us, sp = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, 1e9) for wt in wts])
                record(name, dtype, "teal_matvec", "nothing active", us, sp, 2 * (n + k), dense_us, variant=True)
                for knobs in ({"pdl": 1}, {"split": 1}):
                    with tuned(tune, knobs):
                        us, sp = time_graph([lambda wt=wt: ops.teal_matvec(x, wt, 1e9) for wt in wts])
                    record(name, dtype, "teal_matvec", f"nothing active {fmt(knobs)}", us, sp, 2 * (n + k), dense_us,
                           variant=True)

            # spdp at 50% weight x 50% activation sparsity
            mask = (x.abs() > thr).flatten()
            for r in (32, 64, 128):
                packed = to_dev(enc_spdp[r], dtype)
                touched = spdp_touched(packed, mask, n, k, r)
                check(ops.spdp_matvec(x, packed, thr), reference.spdp_matvec(x, packed, thr), f"spdp {name}")
                cps = clones(packed)
                us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p, thr) for p in cps])
                record(name, dtype, "spdp_matvec", f"s1=0.5 s2=0.5 R={r}", us, sp, touched, dense_us)
                us, sp = time_graph([lambda p=p: ops.spdp_matvec_sel(xs, idx, nnz, p) for p in cps])
                record(name, dtype, "spdp_matvec_sel", f"s1=0.5 s2=0.5 R={r}", us, sp, touched, dense_us)
                if dtype == torch.float16 and not args.quick:
                    for knobs in ({"pdl": 1},):
                        with tuned(tune, knobs):
                            us, sp = time_graph([lambda p=p: ops.spdp_matvec(x, p, thr) for p in cps])
                        record(name, dtype, "spdp_matvec", f"s1=0.5 s2=0.5 R={r} {fmt(knobs)}", us, sp, touched,
                               dense_us, variant=True)
                del cps

            # spinfer: static sparsity, a few tokens, tensor cores
            for s1, enc in enc_spi.items():
                packed = to_dev(enc, dtype)
                nbytes_w = sum(v.numel() * v.element_size() for kk, v in packed.items() if kk != "shape")
                cps = clones(packed)
                for t in (8, 16, 32):
                    xt = torch.randn((t, k), device="cuda").to(dtype)
                    d_us, _ = time_graph([lambda w=w: F.linear(xt, w) for w in ws])
                    check(ops.spinfer_matmul(xt, packed), reference.spinfer_matmul(xt, packed), f"spinfer {name}")
                    us, sp = time_graph([lambda p=p: ops.spinfer_matmul(xt, p) for p in cps])
                    record(name, dtype, "spinfer_matmul", f"s1={s1} T={t} (dense {d_us:.1f}us)", us, sp,
                           nbytes_w + 2 * t * (n + k), d_us)
                    if dtype == torch.float16 and not args.quick:
                        for knobs in ({"spinfer_warps": 8}, {"pdl": 1}):
                            with tuned(tune, knobs):
                                us, sp = time_graph([lambda p=p: ops.spinfer_matmul(xt, p) for p in cps])
                            record(name, dtype, "spinfer_matmul", f"s1={s1} T={t} {fmt(knobs)}", us, sp,
                                   nbytes_w + 2 * t * (n + k), d_us, variant=True)
                del cps
            del ws, wts
        torch.cuda.empty_cache()

    # the short table, last
    print_table(gpu, bw, rows)
    dump(args.json, gpu, bw, rows)


def dump(path, gpu: str, bw: float, rows: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(dict(gpu=gpu, copy_gbs=bw, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
