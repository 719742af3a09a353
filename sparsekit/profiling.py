"""``sparsekit profile``: where each decode token's time goes.

Two ways to record, one way to attribute:

- torch.profiler (default; GPU or CPU): a few decode steps after warm-up, with the ranges of
  ``sparsekit.nvtx`` on, exported as a Chrome trace;
- Nsight Systems (``--nsys``, CUDA): this module re-runs itself under ``nsys profile`` with NVTX
  capture (``python -m sparsekit.profiling SPEC``) and reads ``nsys export --type=sqlite``.

Both become a ``Timeline`` of host ranges and device kernels. On a GPU each kernel gets the
category of the innermost range open on the host when it was launched; kernels replayed from a
CUDA graph (launched by one ``cudaGraphLaunch``) take the category of the kernel at the same
position of an eager reference token recorded just before (or, if the sequences differ, the
category its name had there). A token's time is the span of its kernels on the device; the part
of that span with no kernel running is idle and counts as ``other`` (``idle_ms`` says how much).
On the CPU each range's self time goes to its category and the token's time is its range.
Each token's categories are checked against the wall time of that step measured in the same run
(on the GPU in an un-profiled pass of the same steps: the profiler's host overhead stretches wall time).
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsekit.errors import BadInput, Failure
from sparsekit.nvtx import CATEGORIES, category_of, parse_token, ref_token_range, token_range

ADD_UP_TOLERANCE = 0.10


@dataclass
class Span:
    name: str
    tid: int
    start: float  # microseconds
    end: float


@dataclass
class Kernel:
    name: str
    start: float
    end: float
    launch_tid: int | None = None
    launch_ts: float | None = None
    graph: bool = False  # launched by a CUDA-graph replay


@dataclass
class Timeline:
    spans: list[Span] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)


# ------------------------------------------------------------------------------------- readers
def timeline_from_chrome(trace: dict) -> Timeline:
    """From a torch.profiler (Kineto) Chrome trace: our ranges, select ops, kernels and launches."""
    events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
    spans, launches, kernels = [], {}, []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, name = e.get("cat", ""), e.get("name", "")
        ts, dur = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
        if cat in ("user_annotation", "cpu_op") and category_of(name) is not None or \
                cat == "user_annotation" and parse_token(name) is not None:
            spans.append(Span(name, int(e.get("tid", 0)), ts, ts + dur))
        elif cat in ("cuda_runtime", "cuda_driver"):
            corr = (e.get("args") or {}).get("correlation")
            if corr is not None:
                launches[corr] = (int(e.get("tid", 0)), ts, name)
        elif cat == "kernel":
            kernels.append((e, ts, dur))
    out = []
    for e, ts, dur in kernels:
        corr = (e.get("args") or {}).get("correlation")
        tid, lts, lname = launches.get(corr, (None, None, ""))
        out.append(Kernel(e.get("name", ""), ts, ts + dur, tid, lts, "Graph" in lname))
    return Timeline(spans, out)


def timeline_from_nsys(sqlite_path: Path) -> Timeline:
    """From ``nsys export --type=sqlite``: NVTX push/pop ranges, kernels and their launch calls."""
    import sqlite3

    con = sqlite3.connect(str(sqlite_path))
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        spans = []
        if "NVTX_EVENTS" in tables:
            rows = con.execute(
                "SELECT n.start, n.end, n.globalTid, COALESCE(n.text, s.value) FROM NVTX_EVENTS AS n "
                "LEFT JOIN StringIds AS s ON n.textId = s.id WHERE n.eventType = 59 AND n.end IS NOT NULL")
            for start, end, tid, name in rows:
                if name and (category_of(name) is not None or parse_token(name) is not None):
                    spans.append(Span(name, int(tid), start / 1e3, end / 1e3))
        kernels = []
        if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
            if "CUPTI_ACTIVITY_KIND_RUNTIME" in tables:
                launch_cols = "r.globalTid, r.start, rn.value"
                launch_join = ("LEFT JOIN CUPTI_ACTIVITY_KIND_RUNTIME AS r ON r.correlationId = k.correlationId "
                               "LEFT JOIN StringIds AS rn ON r.nameId = rn.id ")
            else:
                launch_cols, launch_join = "NULL, NULL, NULL", ""
            query = (f"SELECT k.start, k.end, COALESCE(sd.value, ss.value), {launch_cols} "
                     "FROM CUPTI_ACTIVITY_KIND_KERNEL AS k "
                     "LEFT JOIN StringIds AS sd ON k.demangledName = sd.id "
                     "LEFT JOIN StringIds AS ss ON k.shortName = ss.id "
                     f"{launch_join}ORDER BY k.start")
            for start, end, name, tid, lts, lname in con.execute(query):
                kernels.append(Kernel(name or "?", start / 1e3, end / 1e3, None if tid is None else int(tid),
                                      None if lts is None else lts / 1e3, "Graph" in (lname or "")))
    finally:
        con.close()
    return Timeline(spans, kernels)


def timeline_to_chrome(tl: Timeline) -> dict:
    """A Chrome trace of a Timeline (for the nsys path, whose report is not one)."""
    ev = [{"ph": "X", "cat": "user_annotation", "name": s.name, "pid": 0, "tid": s.tid, "ts": s.start,
           "dur": s.end - s.start} for s in tl.spans]
    ev += [{"ph": "X", "cat": "kernel", "name": k.name, "pid": 1, "tid": 0, "ts": k.start, "dur": k.end - k.start}
           for k in tl.kernels]
    return {"traceEvents": ev, "displayTimeUnit": "ms"}


# --------------------------------------------------------------------------------- attribution
class _Nesting:
    """Categorised ranges of one host thread, with parent links, for 'innermost range at t'."""

    def __init__(self, spans: list[Span]):
        self.spans = sorted(spans, key=lambda s: (s.start, -s.end))
        self.starts = [s.start for s in self.spans]
        self.parent: list[int] = []
        stack: list[int] = []
        for i, s in enumerate(self.spans):
            while stack and self.spans[stack[-1]].end < s.end:
                stack.pop()
            self.parent.append(stack[-1] if stack else -1)
            stack.append(i)

    def innermost(self, t: float) -> int:
        i = bisect.bisect_right(self.starts, t) - 1
        while i >= 0 and self.spans[i].end < t:
            i = self.parent[i]
        return i


@dataclass
class TokenBreakdown:
    label: str
    token: int
    ms: dict[str, float]
    total_ms: float
    wall_ms: float | None
    idle_ms: float = 0.0
    source: str = ""

    @property
    def deviation(self) -> float | None:
        if not self.wall_ms:
            return None
        return abs(self.total_ms - self.wall_ms) / self.wall_ms


def _host_breakdown(token: Span, spans: list[Span]) -> dict[str, float]:
    """Self time of every categorised range inside ``token`` (same thread); the rest is 'other'."""
    inside = [s for s in spans if s.tid == token.tid and s.start >= token.start and s.end <= token.end and s is not token]
    nest = _Nesting([token] + inside)
    child_time = [0.0] * len(nest.spans)
    for i, s in enumerate(nest.spans):
        p = nest.parent[i]
        if p >= 0:
            child_time[p] += s.end - s.start
    ms = dict.fromkeys(CATEGORIES, 0.0)
    for i, s in enumerate(nest.spans):
        own = max(0.0, (s.end - s.start) - child_time[i])
        cat = category_of(s.name) if s is not token else None
        ms[cat or "other"] += own / 1e3
    return ms


def _kernel_category(k: Kernel, nests: dict[int, _Nesting]) -> str:
    nest = nests.get(k.launch_tid) if k.launch_tid is not None else None
    if nest is None or k.launch_ts is None:
        return "other"
    i = nest.innermost(k.launch_ts)
    while i >= 0:
        cat = category_of(nest.spans[i].name)
        if cat is not None:
            return cat
        i = nest.parent[i]
    return "other"


def breakdown(tl: Timeline, walls: dict[str, list[float]]) -> tuple[list[TokenBreakdown], dict[str, str]]:
    """Per-token category times for every ``sk:token:LABEL:I`` range; ``walls[label][i-1]`` is the
    measured wall time of token I. Returns (rows, attribution method per label)."""
    tokens, refs = [], {}
    for s in tl.spans:
        p = parse_token(s.name)
        if p and p[0] == "token":
            tokens.append((p[1], p[2], s))
        elif p and p[0] == "reftoken":
            refs[p[1]] = s
    tokens.sort(key=lambda t: t[2].start)
    by_tid: dict[int, list[Span]] = {}
    for s in tl.spans:
        if category_of(s.name) is not None or parse_token(s.name) is not None:
            by_tid.setdefault(s.tid, []).append(s)
    nests = {tid: _Nesting(spans) for tid, spans in by_tid.items()}
    kernels = sorted(tl.kernels, key=lambda k: k.start)
    kstarts = [k.start for k in kernels]

    def kernels_in(span: Span) -> list[Kernel]:
        lo = bisect.bisect_left(kstarts, span.start)
        hi = bisect.bisect_right(kstarts, span.end)
        return kernels[lo:hi]

    ref_cats: dict[str, list[tuple[str, str]]] = {
        label: [(k.name, _kernel_category(k, nests)) for k in kernels_in(span)] for label, span in refs.items()}
    methods: dict[str, str] = {}
    rows = []
    for label, idx, span in tokens:
        wall = walls.get(label, [])
        wall_ms = wall[idx - 1] if 0 < idx <= len(wall) else None
        ks = kernels_in(span)
        if not ks:
            ms = _host_breakdown(span, by_tid.get(span.tid, []))
            rows.append(TokenBreakdown(label, idx, ms, sum(ms.values()), wall_ms, 0.0, "host ranges"))
            methods.setdefault(label, "host ranges (self time of each range)")
            continue
        cats, method = _device_categories(ks, ref_cats.get(label), nests)
        methods.setdefault(label, method)
        ms = dict.fromkeys(CATEGORIES, 0.0)
        busy = 0.0
        for k, c in zip(ks, cats):
            ms[c] += (k.end - k.start) / 1e3
            busy += k.end - k.start
        window = max(k.end for k in ks) - ks[0].start
        idle = max(0.0, window - busy) / 1e3
        ms["other"] += idle
        rows.append(TokenBreakdown(label, idx, ms, sum(ms.values()), wall_ms, idle, method))
    return rows, methods


def _device_categories(ks: list[Kernel], ref: list[tuple[str, str]] | None, nests) -> tuple[list[str], str]:
    """Categories of one token's kernels: by launch for kernels launched one by one (the replay's
    own prologue kernels included), by the eager reference token for CUDA-graph kernels."""
    cats = [_kernel_category(k, nests) for k in ks]
    graph = [i for i, k in enumerate(ks) if k.graph]
    if not graph:
        return cats, "kernel launch inside host ranges"
    names = [ks[i].name for i in graph]
    if ref and len(ref) == len(names) and sum(r[0] == n for r, n in zip(ref, names)) >= 0.9 * len(names):
        by_pos, method = [r[1] for r in ref], "CUDA-graph kernels by position in an eager reference token"
    elif ref:
        votes: dict[str, dict[str, int]] = {}
        for name, cat in ref:
            votes.setdefault(name, {}).setdefault(cat, 0)
            votes[name][cat] += 1
        by_name = {n: max(v, key=v.get) for n, v in votes.items()}
        by_pos, method = [by_name.get(n, "other") for n in names], "CUDA-graph kernels by name in an eager reference token"
    else:
        by_pos, method = ["other"] * len(names), "CUDA-graph kernels without a reference token (all 'other')"
    for i, c in zip(graph, by_pos):
        cats[i] = c
    return cats, method


# ------------------------------------------------------------------------------------ recording
@dataclass
class ProfileSettings:
    model: str = "demo"
    baselines: tuple[str, ...] = ()
    max_new_tokens: int = 32
    input_tokens: int = 32
    nsys: bool = False
    weight_sparsity: float = 0.0
    activation_sparsity: float = 0.0
    format: str = "dense"
    outdir: str = "sparsekit-profile"
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    mode: str | None = None
    attn: str = "sdpa"


def _bench_settings(p: ProfileSettings):
    from sparsekit.bench import Settings

    return Settings(model=p.model, baselines=tuple(p.baselines), input_tokens=p.input_tokens,
                    max_new_tokens=p.max_new_tokens, batch_size=1, warmup=0, repeat=1, attn=p.attn, mode=p.mode,
                    weight_sparsity=p.weight_sparsity, activation_sparsity=p.activation_sparsity, format=p.format,
                    device=p.device, dtype=p.dtype, seed=p.seed)


def validate(p: ProfileSettings):
    from sparsekit.bench import parse_baselines, validate as bench_validate

    if set(p.baselines) - {"dense"}:
        raise BadInput(f"profile --baseline takes only dense, got {','.join(p.baselines)!r}.")
    parse_baselines(",".join(p.baselines))
    device = bench_validate(_bench_settings(p))
    if p.nsys and shutil.which("nsys") is None:
        raise BadInput("--nsys needs Nsight Systems: no 'nsys' on PATH (leave --nsys off to use torch.profiler).")
    out = Path(p.outdir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--outdir {out} exists and is not a directory.")
    return device


def _variants(subject, baselines) -> list[tuple[str, str]]:
    """(label, form) in the order that needs no second copy of the weights."""
    if not subject.is_sparse:
        return [("dense", "dense")]
    sparse = [(subject.fmt if subject.kind != "converted" else subject.label, "sparse")]
    dense = [("dense", "dense")] if "dense" in baselines else []
    return sparse + dense if subject.state == "sparse" else dense + sparse


def record_variant(model, label: str, prompt, steps: int, mode: str, ranges, notes: list[str] | None = None) -> list[float]:
    """Decode ``steps`` tokens inside ``sk:token`` ranges (after an eager reference token in graph
    mode); returns the wall time of each step (ms, synchronised). The session's notes (a capture
    that fell back to eager, say) are appended to ``notes``."""
    import torch

    from sparsekit.runtime.generate import DecodeSession, _sync

    sess = DecodeSession(model, batch_size=prompt.shape[0], prompt_len=prompt.shape[1],
                         max_new_tokens=steps + 1, mode=mode)
    sess.set_prompt(prompt)
    if notes is not None:
        notes.extend(f"{label}: {n}" for n in sess.notes)
    dev = sess.device
    sess.run()  # warm-up
    walls = []
    if mode == "graph":
        sess.reset()
        sess.prefill()
        _sync(dev)
        with ranges.range(ref_token_range(label)):
            sess.step(eager=True)
            _sync(dev)
    sess.reset()
    sess.prefill()
    _sync(dev)
    for i in range(1, steps + 1):
        t = time.perf_counter()  # the wall time brackets the token's range
        with ranges.range(token_range(label, i)):
            sess.step()
            _sync(dev)
        walls.append((time.perf_counter() - t) * 1e3)
    sess.close()
    del sess
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return walls


def _record_all(p: ProfileSettings, subject, device, mode: str, on_trace, nvtx: bool, record: bool, progress=None,
                only: set[str] | None = None, notes: list[str] | None = None):
    """Run every variant (or those in ``only``); ``on_trace(label, prof_or_None)`` after each.
    Returns the step wall times per label."""
    import torch

    from sparsekit.bench import _prompt
    from sparsekit.nvtx import scopes

    prompt = _prompt(subject.model, 1, p.input_tokens, p.seed, device)
    steps = p.max_new_tokens
    walls: dict[str, list[float]] = {}
    variants = [v for v in _variants(subject, p.baselines) if only is None or v[0] in only]
    for n, (label, form) in enumerate(variants):
        subject.to_sparse() if form == "sparse" else subject.to_dense()
        if progress:
            progress(label, n, len(variants))
        with torch.inference_mode():
            if record:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
                with scopes(subject.model, nvtx=nvtx, record=True) as ranges, profile(activities=acts) as prof:
                    walls[label] = record_variant(subject.model, label, prompt, steps, mode, ranges, notes)
                on_trace(label, prof)
            else:
                with scopes(subject.model, nvtx=nvtx, record=False) as ranges:
                    walls[label] = record_variant(subject.model, label, prompt, steps, mode, ranges, notes)
                on_trace(label, None)
        if progress:
            progress(label, n + 1, len(variants))
    return walls


# ------------------------------------------------------------------------------------- outputs
def per_token_csv(rows: list[TokenBreakdown]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "token"] + [f"{c}_ms" for c in CATEGORIES] + ["total_ms", "tpot_ms", "idle_ms"])
    for r in rows:
        w.writerow([r.label, r.token] + [f"{r.ms[c]:.6f}" for c in CATEGORIES]
                   + [f"{r.total_ms:.6f}", "" if r.wall_ms is None else f"{r.wall_ms:.6f}", f"{r.idle_ms:.6f}"])
    return buf.getvalue()


def summarize(rows: list[TokenBreakdown], methods: dict[str, str]) -> dict:
    out = {}
    for label in dict.fromkeys(r.label for r in rows):
        mine = [r for r in rows if r.label == label]
        n = len(mine)
        devs = [r.deviation for r in mine if r.deviation is not None]
        walls = [r.wall_ms for r in mine if r.wall_ms is not None]
        out[label] = {
            "tokens": n,
            "mean_ms": {c: sum(r.ms[c] for r in mine) / n for c in CATEGORIES},
            "mean_total_ms": sum(r.total_ms for r in mine) / n,
            "mean_tpot_ms": (sum(walls) / len(walls)) if walls else None,
            "mean_idle_ms": sum(r.idle_ms for r in mine) / n,
            "max_deviation": max(devs) if devs else None,
            "adds_up": bool(devs) and max(devs) <= ADD_UP_TOLERANCE,
            "attribution": methods.get(label, ""),
        }
    return out


def plot(rows: list[TokenBreakdown], path: Path) -> None:
    """Stacked bar per token for each variant, side by side, plus the mean per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsekit.nvtx import CATEGORY_LABELS

    labels = list(dict.fromkeys(r.label for r in rows))
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(5 * len(labels) + 4, 4.5), sharey=True, squeeze=False)
    colors = dict(zip(CATEGORIES, plt.get_cmap("tab10").colors))
    for ax, label in zip(axes[0], labels):
        mine = [r for r in rows if r.label == label]
        x = [r.token for r in mine]
        bottom = [0.0] * len(mine)
        for c in CATEGORIES:
            h = [r.ms[c] for r in mine]
            ax.bar(x, h, bottom=bottom, color=colors[c], label=CATEGORY_LABELS[c], width=0.85)
            bottom = [b + v for b, v in zip(bottom, h)]
        walls = [r.wall_ms for r in mine]
        if all(w is not None for w in walls):
            ax.plot(x, walls, "k.", markersize=4, label="measured TPOT")
        ax.set_title(label)
        ax.set_xlabel("decode token")
    axes[0][0].set_ylabel("ms per token")
    ax = axes[0][-1]
    bottom = [0.0] * len(labels)
    for c in CATEGORIES:
        h = [sum(r.ms[c] for r in rows if r.label == lb) / max(1, sum(r.label == lb for r in rows)) for lb in labels]
        ax.bar(labels, h, bottom=bottom, color=colors[c], label=CATEGORY_LABELS[c])
        bottom = [b + v for b, v in zip(bottom, h)]
    ax.set_title("mean per token")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(7, len(names)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _finish(p: ProfileSettings, tl_by_label: dict[str, Timeline], walls, device, modes: dict[str, str], source: str,
            extra: dict) -> dict:
    from sparsekit.env import environment
    from sparsekit.formats.checkpoint import write_bytes_atomic, write_json_atomic

    out = Path(p.outdir)
    rows, methods = [], {}
    for label, tl in tl_by_label.items():
        r, m = breakdown(tl, {label: walls.get(label, [])})
        rows += [x for x in r if x.label == label]
        methods.update(m)
    if not rows:
        raise Failure("the profile recorded no decode-token ranges; nothing to break down.")
    write_bytes_atomic(out / "per_token.csv", per_token_csv(rows).encode())
    plot(rows, out / "per_token.png")
    summary = {
        "model": p.model,
        "source": source,
        "device": str(device),
        "mode": ", ".join(sorted(set(modes.values()))),
        "modes": modes,
        "categories": list(CATEGORIES),
        "tolerance": ADD_UP_TOLERANCE,
        "variants": summarize(rows, methods),
        "settings": {**asdict(p), "baselines": list(p.baselines)},
        "files": {"per_token": "per_token.csv", "plot": "per_token.png", **extra},
        "environment": environment(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def run(p: ProfileSettings, progress=None) -> dict:
    """Profile; writes per_token.csv, summary.json, trace(s), per_token.png into ``p.outdir``."""
    from sparsekit.bench import prepare
    from sparsekit.models import resolve_dtype

    device = validate(p)
    mode = p.mode or ("graph" if device.type == "cuda" else "eager")
    out = Path(p.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if p.nsys:
        return _run_nsys(p, device, mode)
    dtype = resolve_dtype(p.dtype, device)
    subject = prepare(_bench_settings(p), device, dtype)
    timelines, traces = {}, {}

    def on_trace(label, prof):
        import gzip

        name = f"trace_{_safe(label)}.json.gz"
        tmp = out / f".{name}.tmp.json.gz"  # the suffix makes torch gzip it
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, out / name)
        with gzip.open(out / name, "rt") as f:
            timelines[label] = timeline_from_chrome(json.load(f))
        traces[label] = name

    warnings = list(subject.warnings)
    walls = _record_all(p, subject, device, mode, on_trace, nvtx=False, record=True, progress=progress, notes=warnings)
    modes = dict.fromkeys(walls, mode)
    if device.type == "cuda" and mode == "graph":
        blind = {label for label, tl in timelines.items() if not _graph_tokens_have_kernels(tl, label)}
        if blind:  # this profiler saw no kernels inside graph replays: record those variants eagerly
            warnings.append(f"torch.profiler recorded no kernels inside CUDA-graph replays for {', '.join(sorted(blind))}; "
                            "re-recorded them in eager mode (launch gaps show as idle 'other').")
            walls.update(_record_all(p, subject, device, "eager", on_trace, nvtx=False, record=True, only=blind))
            modes.update(dict.fromkeys(blind, "eager"))
    if device.type == "cuda":
        # The profiler's host-side bookkeeping stretches each step's wall time while the GPU
        # timeline it records is not stretched; compare the categories with the TPOT of the same
        # steps decoded again without the profiler.
        for label, m in modes.items():
            walls.update(_record_all(p, subject, device, m, lambda *_: None, nvtx=False, record=False, only={label}))
        warnings.append("TPOT per token is measured in a second, un-profiled pass of the same decode steps.")
    summary = _finish(p, timelines, walls, device, modes, "torch.profiler", {"traces": traces})
    summary["warnings"] = warnings
    return summary


def _graph_tokens_have_kernels(tl: Timeline, label: str) -> bool:
    starts = sorted(k.start for k in tl.kernels)
    for s in tl.spans:
        tok = parse_token(s.name)
        if tok and tok[0] == "token" and tok[1] == label:
            i = bisect.bisect_left(starts, s.start)
            if i >= len(starts) or starts[i] > s.end:
                return False
    return True


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


# --------------------------------------------------------------------------------- the nsys path
def _run_nsys(p: ProfileSettings, device, mode: str) -> dict:
    from sparsekit.formats.checkpoint import write_json_atomic

    out = Path(p.outdir).resolve()
    spec = out / "nsys_spec.json"
    write_json_atomic(spec, {**asdict(p), "baselines": list(p.baselines), "outdir": str(out), "mode": mode})
    report = out / "nsys_report"
    nsys = shutil.which("nsys")
    cmd = [nsys, "profile", "--trace=cuda,nvtx", "--cuda-graph-trace=node", "--force-overwrite=true",
           f"--output={report}", sys.executable, "-m", "sparsekit.profiling", str(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise Failure(f"nsys profile failed (exit {res.returncode}): {_last_line(res.stderr or res.stdout)}")
    rep = next((c for c in (report.with_suffix(".nsys-rep"), report.with_suffix(".qdrep")) if c.exists()), None)
    if rep is None:
        raise Failure(f"nsys profile wrote no report at {report}.nsys-rep.")
    sqlite = report.with_suffix(".sqlite")
    res = subprocess.run([nsys, "export", "--type=sqlite", "--force-overwrite=true", f"--output={sqlite}", str(rep)],
                         capture_output=True, text=True)
    if res.returncode != 0 or not sqlite.exists():
        raise Failure(f"nsys export failed (exit {res.returncode}): {_last_line(res.stderr or res.stdout)}")
    child = json.loads((out / "nsys_walls.json").read_text())
    tl = timeline_from_nsys(sqlite)
    tl_by_label = {label: tl for label in child["walls"]}
    (out / "trace_nsys.json").write_text(json.dumps(timeline_to_chrome(tl)))
    summary = _finish(p, tl_by_label, child["walls"], device, dict.fromkeys(child["walls"], mode), "nsys",
                      {"nsys_report": rep.name, "sqlite": sqlite.name, "traces": {"nsys": "trace_nsys.json"}})
    summary["warnings"] = child.get("warnings", [])
    return summary


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _child(spec_path: str) -> None:
    """Under nsys: run the variants with NVTX ranges only; write the step wall times."""
    from sparsekit.bench import prepare
    from sparsekit.formats.checkpoint import write_json_atomic
    from sparsekit.models import resolve_dtype

    spec = json.loads(Path(spec_path).read_text())
    mode = spec.pop("mode")
    p = ProfileSettings(**{**spec, "baselines": tuple(spec["baselines"]), "nsys": False, "mode": mode})
    device = validate(p)
    subject = prepare(_bench_settings(p), device, resolve_dtype(p.dtype, device))
    warnings = list(subject.warnings)
    walls = _record_all(p, subject, device, mode, lambda label, prof: None, nvtx=True, record=False, notes=warnings)
    write_json_atomic(Path(p.outdir) / "nsys_walls.json", {"walls": walls, "warnings": warnings})


if __name__ == "__main__":  # python -m sparsekit.profiling SPEC (the nsys child)
    _child(sys.argv[1])
