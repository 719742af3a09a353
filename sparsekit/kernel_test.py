"""``sparsekit kernel-test``: every kernel backend against the reference, and (``--bench``) timed.

Correctness matrix: op x backend x dtype x shape x tokens, on fresh random inputs every time (odd
sizes in ``tiny``). Before each run the allocator is poisoned with NaN-filled blocks of the output's
size (the op allocates its output; a block it forgets to write then shows up as NaN), and every
output element must be finite where the reference is. Error = max |y - ref| / max |ref|.

Benchmark: per op and shape, time (CUDA-graph replays over rotating weight copies on GPU, so the
weights are not served from L2; wall-clock medians on CPU), GB/s on the bytes the kernel actually
touches, speedup over the dense ``x @ W.T`` of the same dtype (cuBLAS on GPU), and the ratio to the
bytes floor (bytes touched / measured copy bandwidth).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from sparsekit import ops
from sparsekit.errors import BadInput
from sparsekit.formats import rowdelta, spdp, spinfer
from sparsekit.kernels import reference
from sparsekit.pruning.masks import nm_out_mask

OPS = ("select", "teal_matvec", "teal_matvec_sel", "teal_matvec_rel", "teal_matvec_glu", "spdp_matvec",
       "spdp_matvec_sel", "spdp_matvec_rel", "spdp_matvec_glu", "spinfer_matmul", "rowdelta_matvec", "spdp_decode")
SHAPES = {  # (K inputs, N outputs)
    "tiny": [(37, 29), (130, 67), (5, 300), (256, 192)],
    "llama2-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
    "llama3-8b": [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)],
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
ACT_SPARSITIES = (0.0, 0.25, 0.5, 0.7, 0.9)
WEIGHT_SPARSITIES = (0.0, 0.5, 0.7)
SPDP_TILE_ROWS = 64


@dataclass
class Check:
    op: str
    backend: str
    dtype: str
    shape: str
    tokens: int
    detail: str
    max_rel_err: float
    tol: float
    passed: bool
    note: str = ""


@dataclass
class BenchRow:
    op: str
    backend: str
    device: str
    dtype: str
    shape: str
    tokens: int
    s1: float
    s2: float
    ms: float
    gbs: float
    dense_ms: float
    speedup: float
    floor_ms: float
    x_floor: float
    extra: dict = field(default_factory=dict)


def resolve(device: str, shapes: str, dtype: str | None, backend: str | None) -> tuple[torch.device, list, list, list]:
    """Validate the options; returns (device, shapes, dtypes, backends)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}.") from None
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but no CUDA device is available.")
    if shapes == "all":
        shape_list = [s for name in SHAPES for s in SHAPES[name]]
    elif shapes in SHAPES:
        shape_list = SHAPES[shapes]
    else:
        raise BadInput(f"--shapes must be tiny, llama2-7b, llama3-8b or all, got {shapes!r}.")
    shape_list = list(dict.fromkeys(shape_list))
    if dtype is None:
        dtypes = list(DTYPES.values())
    elif dtype in DTYPES:
        dtypes = [DTYPES[dtype]]
    else:
        raise BadInput(f"--dtype must be float16, bfloat16 or float32, got {dtype!r}.")
    avail = ops.available_backends(dev)
    if backend is None:
        backends = [b for b in avail if b != "reference"] or ["reference"]
    elif backend not in ops.BACKENDS:
        raise BadInput(f"--backend must be one of {', '.join(ops.BACKENDS)}, got {backend!r}.")
    elif backend not in avail:
        raise BadInput(f"backend {backend!r} is not available on {dev.type} here (available: {', '.join(avail)}).")
    else:
        backends = [backend]
    return dev, shape_list, dtypes, backends


# ------------------------------------------------------------------------------------ inputs
def _weight(n: int, k: int, s1: float, dtype, device, gen) -> torch.Tensor:
    w = torch.randn(n, k, generator=gen, dtype=torch.float32) / k**0.5
    if s1 > 0:
        w[torch.rand(n, k, generator=gen) < s1] = 0
    return w.to(dtype).to(device)


def _weight_24out(n: int, k: int, dtype, device, gen) -> torch.Tensor:
    """Random weights pruned 2:4 over output rows (2 of every 4 consecutive rows of each column kept,
    values kept off zero): the pattern of the spdp kernels' balanced paths; N % 4 == 0."""
    w = torch.randn(n, k, generator=gen, dtype=torch.float32) / k**0.5
    w = torch.where(w.abs() < 1e-3, torch.full_like(w, 1e-3), w)
    return w.masked_fill(nm_out_mask(torch.rand(n, k, generator=gen), 2, 4), 0.0).to(dtype).to(device)


def _input(t: int, k: int, dtype, device, gen) -> torch.Tensor:
    return torch.randn(t, k, generator=gen, dtype=torch.float32).to(dtype).to(device)


def _threshold(x: torch.Tensor, s2: float) -> float:
    """A threshold that zeroes about a fraction s2 of x (0 keeps everything non-zero)."""
    if s2 <= 0:
        return 0.0
    return float(torch.quantile(x.float().abs().flatten().cpu(), s2))


def _off_boundary(x: torch.Tensor, statistic, thr: float) -> torch.Tensor:
    """x with the entries whose ``statistic(x)`` lies within 1% of ``thr`` set to 0 (repeated while
    that moves others there): a kernel may sum or round in another order than torch, and a value on
    the threshold would then flip between kept and dropped."""
    for _ in range(20):
        near = (statistic(x) - thr).abs() <= 0.01 * thr
        if thr <= 0 or not bool(near.any()):
            return x
        x = torch.where(near, torch.zeros((), dtype=x.dtype, device=x.device), x)
    return x


def _poison(shape, dtype, device) -> None:
    """Fill and free a block of the output's size, so an unwritten output element reads NaN."""
    for _ in range(2):
        torch.full(shape, float("nan"), dtype=dtype, device=device)


def _rel_err(y: torch.Tensor, r: torch.Tensor) -> float:
    d = (y.double() - r.double()).abs()
    bad = torch.isfinite(r.double()) & ~torch.isfinite(y.double())
    if bool(bad.any()):
        return float("inf")
    scale = float(r.double().abs().max()) if r.numel() else 0.0
    return float(d.max()) / scale if scale > 0 else float(d.max()) if d.numel() else 0.0


def _on_device(packed: dict, device) -> dict:
    """A packed weight's tensors on ``device``, its ``shape`` kept on the CPU (read without a sync)."""
    return {key: v.cpu() if key == "shape" else v.to(device) for key, v in packed.items()}


# --------------------------------------------------------------------------------- correctness
def check_case(op: str, backend: str, dtype, k: int, n: int, t: int, device, gen) -> Check:
    x = _input(t, k, dtype, device, gen)
    s2 = float(torch.rand(1, generator=gen)) * 0.9 if t > 0 else 0.0
    thr = _threshold(x, s2)
    w = _weight(n, k, 0.5, dtype, device, gen)
    tile_rows = (32, 64, 128)[int(torch.randint(0, 3, (1,), generator=gen))] if k * n < 10**5 else SPDP_TILE_ROWS
    detail = f"s2~{s2:.2f}"
    sel = reference.select(x, thr)
    if op == "select":
        _poison(x.shape, dtype, device)
        xs, idx, nnz = ops.select(x, thr, backend=backend)
        m = int(sel[2][0])
        ok = torch.equal(xs, sel[0]) and int(nnz[0]) == m and torch.equal(idx[:m].cpu(), sel[1][:m].cpu())
        return Check(op, backend, _name(dtype), f"{k}->{n}", t, detail, 0.0 if ok else float("inf"), 0.0, ok)
    if op == "spdp_decode":  # the prefill path: bit-exact dense weight from the packed one
        packed = _on_device(spdp.encode(w, tile_rows), device)
        _poison((n, k), dtype, device)
        y = ops.spdp_decode(packed, backend=backend)
        ok = y.shape == w.shape and y.dtype == w.dtype and torch.equal(y, w)
        return Check(op, backend, _name(dtype), f"{k}->{n}", t, f"R={tile_rows} s1=0.5", 0.0 if ok else float("inf"),
                     0.0, ok)
    if op.endswith("_rel"):  # a threshold relative to each token's mean |x|, dropping about s2 of x
        rm = reference.relative_magnitude
        thr = float(torch.quantile(rm(x).flatten().cpu(), s2)) if s2 > 0 else 0.0
        x = _off_boundary(x, rm, thr)
        detail = f"s2~{s2:.2f} relative"
    elif op.endswith("_glu"):  # x becomes [gate | up]; the product silu(gate) * up is thresholded
        up = _input(t, k, dtype, device, gen)
        thr = _threshold(reference.silu_mul(torch.cat([x, up], -1)), s2)
        x = torch.cat([_off_boundary(x, lambda g: reference.silu_mul(torch.cat([g, up], -1)).float().abs(), thr), up], -1)
        detail = f"s2~{s2:.2f} swiglu"
    if op.startswith("teal"):
        w_t = w.t().contiguous()
        fn = None if op.endswith("_sel") else getattr(ops, op)  # _sel: from the shared selection
        ref = getattr(reference, op if fn else "teal_matvec")(x, w_t, thr)
        run = (lambda: fn(x, w_t, thr, backend=backend)) if fn else (
            lambda: ops.teal_matvec_sel(*sel, w_t, backend=backend))
    elif op.startswith("spdp"):
        # whole tiles: half the cases take a 2:4-over-rows weight declared in the fixed layout (on CUDA the
        # kernels that read no offsets: the one-token family up to 3 tokens here, the tensor-core kernel's
        # variant at 17; the other backends compute the same product)
        fixed = n % tile_rows == 0 and float(torch.rand(1, generator=gen)) < 0.5
        packed = _on_device(spdp.encode(_weight_24out(n, k, dtype, device, gen) if fixed else w, tile_rows), device)
        if fixed and spdp.fixed_layout(packed):
            packed["fixed"] = True
            detail += f" R={tile_rows} s1=0.5 2:4-out fixed"
        else:
            detail += f" R={tile_rows} s1=0.5"
        fn = None if op.endswith("_sel") else getattr(ops, op)
        ref = getattr(reference, op if fn else "spdp_matvec")(x, packed, thr)
        run = (lambda: fn(x, packed, thr, backend=backend)) if fn else (
            lambda: ops.spdp_matvec_sel(*sel, packed, backend=backend))
    elif op == "rowdelta_matvec":
        packed = rowdelta.encode(w)  # on w's device
        detail = "s1=0.5"
        ref = reference.rowdelta_matvec(x, packed)
        run = lambda: ops.rowdelta_matvec(x, packed, backend=backend)  # noqa: E731
    else:
        packed = _on_device(spinfer.encode(w), device)
        detail = "s1=0.5"
        ref = reference.spinfer_matmul(x, packed)
        run = lambda: ops.spinfer_matmul(x, packed, backend=backend)  # noqa: E731
    _poison((t, n), dtype, device)
    try:
        y = run()
    except (NotImplementedError, RuntimeError) as exc:
        if "not implemented" in str(exc).lower() or "could not run" in str(exc).lower():
            return Check(op, backend, _name(dtype), f"{k}->{n}", t, detail, float("nan"), TOL[dtype], False, "missing")
        raise
    ok_shape = y.shape == ref.shape and y.dtype == ref.dtype
    err = _rel_err(y, ref) if ok_shape else float("inf")
    return Check(op, backend, _name(dtype), f"{k}->{n}", t, detail, err, TOL[dtype], ok_shape and err <= TOL[dtype])


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def correctness(device, shapes, dtypes, backends, seed: int, progress=None) -> list[Check]:
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for k, n in shapes:
        big = k * n >= 10**6
        for t in ((1,) if big else (1, 3, 17)):
            for dtype in dtypes:
                for backend in backends:
                    cases += [(op, backend, dtype, k, n, t) for op in OPS if op != "spdp_decode" or t == 1]
        if big:
            cases += [("spinfer_matmul", b, d, k, n, 16) for d in dtypes for b in backends]
    task = progress.add_task("checking kernels", total=len(cases)) if progress else None
    out = []
    for op, backend, dtype, k, n, t in cases:
        out.append(check_case(op, backend, dtype, k, n, t, device, gen))
        if progress:
            progress.advance(task)
    return out


# --------------------------------------------------------------------------------------- bench
def copy_bandwidth(device) -> float:
    """Measured copy bandwidth in GB/s (read + write of a buffer far larger than the caches)."""
    nbytes = 1 << 30 if device.type == "cuda" else 1 << 28
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    t = _time(device, [lambda: b.copy_(a)], reps=10)
    return 2 * nbytes / t / 1e9


def _time(device, calls, reps: int = 15) -> float:
    """Seconds per call: ``calls`` are equivalent calls on different weight copies."""
    if device.type == "cuda":
        for c in calls:
            c()
        torch.cuda.synchronize()
        graph = None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for c in calls:
                    c()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for c in calls:
                    c()
        except Exception:  # an op that syncs cannot be captured: time it eagerly
            graph = None
        run = graph.replay if graph is not None else (lambda: [c() for c in calls])
        run()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / len(calls))
        return statistics.median(times)
    for c in calls:
        c()
    times = []
    for _ in range(reps):
        for c in calls:
            t0 = time.perf_counter()
            c()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _copies(device, weight_bytes: int) -> int:
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    return max(2, min(16, -(-4 * l2 // max(1, weight_bytes))))


def _spdp_touched(packed: dict, idx: torch.Tensor, nnz: int, elt: int) -> int:
    n, k, r = spdp.dims(packed)
    nt = -(-n // r)
    off = packed["offsets"].cpu().to(torch.int64)
    counts = (off[1:] - off[:-1]).reshape(nt, k)
    cols = idx[:nnz].cpu().long()
    return int(counts[:, cols].sum()) * elt + nt * nnz * (r // 8 + 4)


def _packed_copies(packed: dict, device, copies: int) -> list[dict]:
    on = _on_device(packed, device)
    return [on] + [{key: (v.clone() if key != "shape" else v) for key, v in on.items()} for _ in range(copies - 1)]


def bench(device, shapes, dtypes, backends, seed: int, progress=None) -> list[BenchRow]:
    """Times every backend on the same weights (encoded once per shape, dtype and s1)."""
    gen = torch.Generator().manual_seed(seed)
    bw = copy_bandwidth(device)
    rows: list[BenchRow] = []
    backends = [b for b in backends if b != "reference"]  # the reference syncs: it is not a kernel
    plan = [(k, n, d) for k, n in shapes for d in dtypes]
    task = progress.add_task("timing kernels", total=len(plan) * (1 + len(WEIGHT_SPARSITIES))) if progress else None
    for k, n, dtype in plan:
        elt = torch.empty((), dtype=dtype).element_size()
        copies = _copies(device, n * k * elt)
        x = _input(1, k, dtype, device, gen)
        x16 = _input(16, k, dtype, device, gen)
        w_ts = [_weight(n, k, 0.0, dtype, device, gen).t().contiguous() for _ in range(copies)]
        dense = {t: _time(device, [lambda w=w, xx=xx: xx @ w for w in w_ts]) for t, xx in ((1, x), (16, x16))}
        sel = {s2: reference.select(x, _threshold(x, s2)) for s2 in ACT_SPARSITIES}
        thr = {s2: _threshold(x, s2) for s2 in ACT_SPARSITIES}

        def row(op, backend, s1, s2, secs, touched, tokens=1, **extra):
            floor = touched / bw / 1e9
            rows.append(BenchRow(
                op=op, backend=backend, device=str(device), dtype=_name(dtype), shape=f"{k}->{n}", tokens=tokens,
                s1=s1, s2=s2, ms=secs * 1e3, gbs=touched / secs / 1e9, dense_ms=dense[tokens] * 1e3,
                speedup=dense[tokens] / secs, floor_ms=floor * 1e3, x_floor=secs / floor, extra=extra))

        for b in backends:
            for s2 in ACT_SPARSITIES:
                t, nnz = thr[s2], int(sel[s2][2][0])
                row("select", b, 0.0, s2, _time(device, [lambda: ops.select(x, t, backend=b)]), k * elt * 2 + k * 4)
                secs = _time(device, [lambda w=w: ops.teal_matvec(x, w, t, backend=b) for w in w_ts])
                row("teal_matvec", b, 0.0, s2, secs, nnz * n * elt + (k + n) * elt, nnz=nnz)
        del w_ts
        if progress:
            progress.advance(task)
        for s1 in WEIGHT_SPARSITIES:
            w = _weight(n, k, s1, dtype, device, gen)
            spdp_w = _packed_copies(spdp.encode(w, SPDP_TILE_ROWS), device, copies)
            spinfer_w = _packed_copies(spinfer.encode(w), device, copies)
            rowdelta_w = _packed_copies(rowdelta.encode(w), device, copies)
            del w
            for b in backends:
                for s2 in ACT_SPARSITIES:
                    t, (xs, idx, nz) = thr[s2], sel[s2]
                    nnz = int(nz[0])
                    secs = _time(device, [lambda p=p: ops.spdp_matvec(x, p, t, backend=b) for p in spdp_w])
                    row("spdp_matvec", b, s1, s2, secs, _spdp_touched(spdp_w[0], idx, nnz, elt) + (k + n) * elt, nnz=nnz)
                for tokens, xx in ((1, x), (16, x16)):
                    secs = _time(device, [lambda p=p: ops.spinfer_matmul(xx, p, backend=b) for p in spinfer_w])
                    row("spinfer_matmul", b, s1, 0.0, secs, spinfer.nbytes(spinfer_w[0]) + (k + n) * tokens * elt, tokens=tokens)
                secs = _time(device, [lambda p=p: ops.rowdelta_matvec(x, p, backend=b) for p in rowdelta_w])
                row("rowdelta_matvec", b, s1, 0.0, secs, rowdelta.nbytes(rowdelta_w[0]) + (k + n) * elt)
            del spdp_w, spinfer_w, rowdelta_w
            if progress:
                progress.advance(task)
    return rows


def as_dicts(items) -> list[dict]:
    return [asdict(i) for i in items]
