"""``sparsekit bench``: TTFT and TPOT of greedy decoding, sparse against dense in one process.

Every variant (the model as asked, its dense form, transformers' own ``generate``) runs in the same
harness (``sparsekit.runtime.generate.DecodeSession``): prefill, then decode from a static KV cache,
each decode step a CUDA-graph replay in ``graph`` mode. TTFT = prompt in -> first token sampled
(synchronised); TPOT = (latency - TTFT) / (new tokens - 1). Result keys follow vLLM's benchmark
(``mean_ttft_ms``, ``p99_tpot_ms``, ``output_throughput``, ...), plus ``bandwidth_gbs`` (bytes
touched per decode step / TPOT) and ``floor_tpot_ms`` (those bytes / the measured device bandwidth).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sparsekit import synthetic
from sparsekit.errors import BadInput

BASELINES = ("dense", "hf")
ATTNS = ("sdpa", "flash_attention_2", "eager")
Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass
class Settings:
    """What to run; ``validate`` checks it (nothing has been loaded or written yet)."""

    model: str = "demo"
    baselines: tuple[str, ...] = ()
    input_tokens: int = 32
    max_new_tokens: int = 256
    batch_size: int = 1
    warmup: int = 5
    repeat: int = 15
    attn: str = "sdpa"
    mode: str | None = None  # None: graph on CUDA, eager on CPU
    weight_sparsity: float = 0.0
    activation_sparsity: float = 0.0
    format: str = "dense"
    structure: str = "unstructured"  # the random weight mask's: unstructured, N:M or N:M-out
    save_per_iter: bool = False
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    fuse: bool = True  # one launch for q/k/v and one for gate/up (owned harness)
    compile: bool | None = None  # torch.compile the decode step (and the prefill); None: on in graph mode
    compile_prefill: bool = True  # with compile: the prefill forward too (False: eager prefill, an ablation)
    # inductor's coordinate-descent tuning of the kernels it generates, for every variant alike; None: on when
    # compiling in graph mode. It is the honest dense baseline: on the H100 it takes dense fp16 TPOT from 5.85 to
    # 5.30-5.45 ms (benchmarks/NOTES.md, seventeenth session), for about a minute more of compile per variant
    autotune: bool | None = None


def parse_baselines(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise BadInput(f"--baseline must be dense, hf or dense,hf, got {value!r}.")
    return names


def validate(s: Settings):
    """Check every option; returns the resolved torch device. Raises BadInput."""
    import importlib.util

    from sparsekit.models import resolve_device

    if s.attn not in ATTNS:
        raise BadInput(f"--attn must be one of {', '.join(ATTNS)}, got {s.attn!r}.")
    if s.mode not in (None, "graph", "eager"):
        raise BadInput(f"--mode must be graph or eager, got {s.mode!r}.")
    for name in ("input_tokens", "max_new_tokens", "batch_size", "repeat"):
        if getattr(s, name) < (2 if name == "max_new_tokens" else 1):
            raise BadInput(f"--{name.replace('_', '-')} is too small: {getattr(s, name)}.")
    if s.warmup < 0:
        raise BadInput(f"--warmup must be 0 or more, got {s.warmup}.")
    synthetic.check_format(s.format, s.weight_sparsity, s.activation_sparsity, s.structure)
    if synthetic.is_synthetic(s.model):
        synthetic.synthetic_name(s.model)
    device = resolve_device(s.device)
    if s.mode == "graph" and device.type != "cuda":
        raise BadInput("--mode graph replays CUDA graphs and needs a CUDA device; use --mode eager on the CPU.")
    if s.attn == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise BadInput("--attn flash_attention_2 needs the flash-attn package, which is not installed.")
        if device.type != "cuda":
            raise BadInput("--attn flash_attention_2 runs only on a CUDA device.")
    return device


# ------------------------------------------------------------------------------------ measuring
def device_bandwidth_gbs(device, nbytes: int | None = None) -> float:
    """Bytes read + written per second by a large device-to-device copy (GB/s, 1e9)."""
    import torch

    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        for _ in range(3):
            dst.copy_(src)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        reps = 10
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1e3 / reps
    else:
        dst.copy_(src)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
    return 2 * nbytes / seconds / 1e9


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _stats(prefix: str, values: list[float]) -> dict:
    return {
        f"mean_{prefix}_ms": statistics.fmean(values) if values else float("nan"),
        f"median_{prefix}_ms": statistics.median(values) if values else float("nan"),
        f"std_{prefix}_ms": statistics.pstdev(values) if len(values) > 1 else 0.0,
        f"p90_{prefix}_ms": _pct(values, 90),
        f"p99_{prefix}_ms": _pct(values, 99),
    }


def summarize(runs: list, batch_size: int, input_tokens: int, save_per_iter: bool = False) -> dict:
    """vLLM-style metrics of a list of ``RunTiming``."""
    ttft = [r.ttft_ms for r in runs]
    tpot = [r.tpot_ms for r in runs]
    e2el = [r.latency_ms for r in runs]
    itl = [ms for r in runs for ms in r.step_ms]
    duration = sum(e2el) / 1e3
    new = runs[0].new_tokens if runs else 0
    out = {
        "completed": len(runs) * batch_size,
        "total_input_tokens": len(runs) * batch_size * input_tokens,
        "total_output_tokens": len(runs) * batch_size * new,
        "duration": duration,
        **_stats("ttft", ttft), **_stats("tpot", tpot), **_stats("itl", itl), **_stats("e2el", e2el),
    }
    out["request_throughput"] = out["completed"] / duration if duration else float("nan")
    out["output_throughput"] = out["total_output_tokens"] / duration if duration else float("nan")
    out["total_token_throughput"] = (out["total_input_tokens"] + out["total_output_tokens"]) / duration if duration else float("nan")
    out["decode_throughput"] = batch_size / (out["mean_tpot_ms"] / 1e3) if out["mean_tpot_ms"] else float("nan")
    if save_per_iter:
        out["per_iter"] = [asdict(r) | {"tpot_ms": r.tpot_ms} for r in runs]
    return out


# -------------------------------------------------------------------------------- bytes touched
def weight_bytes_per_step(model, activation_sparsity: float) -> int:
    """Weights one decode step reads (format metadata, norms, lm_head, one embedding row):
    ``sparsekit.runtime.patch.bytes_per_token``, for dense and converted models alike."""
    from sparsekit.runtime.patch import bytes_per_token

    return int(bytes_per_token(model, activation_sparsity))


def kv_bytes_per_step(model, batch_size: int, kv_len: float) -> int:
    """K and V read by one decode step at cache length ``kv_len``, every layer."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elem = next(model.parameters()).element_size()
    return int(2 * c.num_hidden_layers * batch_size * heads * head_dim * kv_len * elem)


# ------------------------------------------------------------------------------ the subject model
@dataclass
class Subject:
    """The model under test and how to turn it into its dense and its sparse form (in place)."""

    model: object
    label: str
    kind: str  # synthetic | hf | converted
    fmt: str
    weight_sparsity: float
    activation_sparsity: float
    thresholds: dict | None = None
    structure: str | None = None  # of the random weight masks (None: a converted model, not masked here)
    state: str = "dense"  # which form the model is in now
    conversion: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def is_sparse(self) -> bool:
        return self.kind == "converted" or self.fmt != "dense" or self.activation_sparsity > 0

    def to_sparse(self) -> None:
        if self.state == "sparse" or not self.is_sparse:
            return
        from sparsekit.runtime.patch import convert_model

        report = convert_model(self.model, self.fmt, self.thresholds)
        self.conversion = _jsonable(report)
        self.state = "sparse"

    def to_dense(self) -> None:
        if self.state == "dense":
            return
        densify_(self.model)
        self.state = "dense"


def _jsonable(obj):
    try:
        json.dumps(obj, default=str)
        return obj
    except (TypeError, ValueError):
        return str(obj)


def densify_(model) -> int:
    """Replace every SparseLinear by an nn.Linear holding its decoded weight; returns how many."""
    from sparsekit.runtime.linear import SparseLinear, dense_linear

    swaps = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name, m in swaps:
        lin = dense_linear(m.dense_weight(), None if m.bias is None else m.bias.detach())
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, lin)
    return len(swaps)


def _converted_config(path: str) -> dict | None:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc if qc.get("quant_method") == "sparsekit" else None


def prepare(s: Settings, device, dtype) -> Subject:
    """Load or build the model (dense form first where it has one) and its sparsity settings."""
    from sparsekit.models import resolve_model_path

    fmt, s2 = s.format, s.activation_sparsity
    s1 = synthetic.check_format(fmt, s.weight_sparsity, s2, s.structure)
    structure = synthetic.mask_structure(fmt, s.structure)
    asked_sparsity = fmt != "dense" or s1 > 0 or s2 > 0
    warnings: list[str] = []
    if synthetic.is_synthetic(s.model):
        model = synthetic.build(s.model, device, dtype, seed=s.seed, attn=s.attn)
        kind = "synthetic"
        warnings.append(synthetic.QUALITY_WARNING)
    else:
        path = resolve_model_path(s.model)
        qc = _converted_config(path) if Path(path).is_dir() else None
        if qc is not None:
            if asked_sparsity:
                raise BadInput(f"{s.model} is already converted ({qc.get('format')}); --format/--weight-sparsity/"
                               "--structure/--activation-sparsity apply only to dense models.")
            from sparsekit.runtime.load import load

            model, _ = load(path, device=device, dtype=None if s.dtype == "auto" else s.dtype)
            model.set_attn_implementation(s.attn)
            _check_length(model, s)
            return Subject(model.eval(), f"{qc.get('format', 'sparse')}", "converted", qc.get("format", "?"),
                           float(qc.get("weight_sparsity") or 0.0), float(qc.get("activation_sparsity") or 0.0),
                           state="sparse")
        from sparsekit.models import load_model

        model, _ = load_model(s.model, device=device, dtype=dtype)
        model.set_attn_implementation(s.attn)
        kind = "hf"
        if s1 > 0:
            warnings.append("weights pruned with random masks for this benchmark: quality is meaningless; only timings are.")
        if s2 > 0:
            warnings.append("activation thresholds calibrated on random tokens for this benchmark; for real ones use "
                            "sparsekit calibrate + convert.")
    _check_length(model, s)
    if s1 > 0:
        synthetic.apply_weight_sparsity(model, s1, seed=s.seed, structure=structure)
    thresholds = synthetic.calibrate_thresholds(model, s2, seed=s.seed) if s2 > 0 else None
    label = fmt if fmt != "dense" or asked_sparsity else "dense"
    if asked_sparsity:
        shape = f" {structure}" if structure not in ("unstructured", fmt) else ""
        label += f" (s1={s1:g}{shape}, s2={s2:g})"
    return Subject(model, label, kind, fmt, s1, s2, thresholds, structure=structure, warnings=warnings)


def _check_length(model, s: Settings) -> None:
    from sparsekit.models import max_seqlen

    limit = max_seqlen(model)
    if s.input_tokens + s.max_new_tokens > limit:
        raise BadInput(f"--input-tokens {s.input_tokens} + --max-new-tokens {s.max_new_tokens} exceed the model's "
                       f"{limit} positions.")


# ----------------------------------------------------------------------------------- the harness
def _prompt(model, batch_size: int, input_tokens: int, seed: int, device):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch_size, input_tokens), generator=gen).to(device)


def compile_enabled(s: Settings, mode: str) -> bool:
    return s.compile if s.compile is not None else mode == "graph"


# the inductor settings of autotuned variants (DecodeSession's ``inductor``)
AUTOTUNE_INDUCTOR = {"coordinate_descent_tuning": True}


def autotune_enabled(s: Settings, mode: str) -> bool:
    """Coordinate-descent tuning of the compiled forwards' generated kernels (only where they are compiled)."""
    return compile_enabled(s, mode) and (s.autotune if s.autotune is not None else mode == "graph")


def time_owned_loop(model, prompt, s: Settings, mode: str, progress: Progress | None, label: str) -> tuple[list, dict]:
    """Warm up and time ``repeat`` runs of the owned decode loop; returns (timings, facts).

    With ``s.fuse`` the projections of each input site run as one launch while this variant is
    timed (split back afterwards, so the next variant starts from the same modules)."""
    from sparsekit.runtime.fuse import fuse_projections, glu_fused, unfuse_projections

    fused = fuse_projections(model) if s.fuse else 0
    glu = glu_fused(model)
    try:
        runs, facts = _time_session(model, prompt, s, mode, progress, label)
    finally:
        if fused:
            unfuse_projections(model)
    facts["fused_groups"] = fused
    facts["glu_fused"] = glu  # MLPs whose SwiGLU product runs inside the down projection's kernel
    return runs, facts


def _time_session(model, prompt, s: Settings, mode: str, progress: Progress | None, label: str) -> tuple[list, dict]:
    import torch

    from sparsekit.runtime.generate import DecodeSession

    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=s.batch_size, prompt_len=s.input_tokens,
                             max_new_tokens=s.max_new_tokens, mode=mode, compile=compile_enabled(s, mode),
                             compile_prefill=s.compile_prefill,
                             inductor=AUTOTUNE_INDUCTOR if autotune_enabled(s, mode) else None)
        sess.set_prompt(prompt)
        total = s.warmup + s.repeat
        runs, tokens = [], []
        for i in range(total):
            r = sess.run(per_step=True)
            if i >= s.warmup:
                runs.append(r)
                tokens.append(sess.tokens())
            if progress:
                progress(label, i + 1, total)
        facts = {"mode": mode, "compiled": sess.compiled, "prefill_compiled": sess.prefill_compiled,
                 "autotune": sess.compiled and autotune_enabled(s, mode),
                 "prefill_graph": sess.prefill_graph is not None,
                 "decode_graph": sess.decode_graph is not None, "notes": list(sess.notes),
                 "tokens_identical_across_repeats": all(torch.equal(tokens[0], t) for t in tokens),
                 "first_tokens": tokens[0][0, :8].tolist()}
        sess.close()
    _free(model)
    return runs, facts


def time_hf_generate(model, prompt, s: Settings, progress: Progress | None, label: str) -> tuple[list, dict]:
    """transformers' ``generate`` with its static cache: TTFT from a 1-token call, latency from N."""
    import torch

    from sparsekit.runtime.generate import RunTiming, _sync

    dev = prompt.device
    mask = torch.ones_like(prompt)

    def gen(n: int):
        return model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              cache_implementation="static", pad_token_id=0)

    runs = []
    total = s.warmup + s.repeat
    out = None
    with torch.inference_mode():
        for i in range(total):
            _sync(dev)
            t0 = time.perf_counter()
            gen(1)
            _sync(dev)
            ttft = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            out = gen(s.max_new_tokens)
            _sync(dev)
            latency = (time.perf_counter() - t0) * 1e3
            if i >= s.warmup:
                # the TTFT call is separate, so latency = TTFT + the rest of this call's decode
                runs.append(RunTiming(ttft_ms=ttft, latency_ms=latency, new_tokens=s.max_new_tokens))
            if progress:
                progress(label, i + 1, total)
    facts = {"mode": "transformers generate, cache_implementation='static'",
             "first_tokens": out[0, s.input_tokens:s.input_tokens + 8].tolist() if out is not None else []}
    _free(model)
    return runs, facts


def _free(model) -> None:
    import gc

    import torch

    gc.collect()
    if next(model.parameters()).is_cuda:
        torch.cuda.empty_cache()


def measure(model, prompt, s: Settings, *, name: str, harness: str = "owned", mode: str = "eager",
            bandwidth_gbs: float, activation_sparsity: float = 0.0, progress: Progress | None = None) -> dict:
    """Time one variant (the model as it is now) and return its vLLM-keyed metrics, bytes and floor.

    ``harness``: ``owned`` (``DecodeSession``) or ``hf`` (transformers ``generate``, static cache).
    ``activation_sparsity``: the s2 its SparseLinears run at (for the bytes touched).
    """
    if harness == "owned":
        runs, facts = time_owned_loop(model, prompt, s, mode, progress, name)
    else:
        runs, facts = time_hf_generate(model, prompt, s, progress, name)
    # union of active channels over the batch, assuming channels drop independently per sequence
    s2_union = activation_sparsity ** s.batch_size
    weights = weight_bytes_per_step(model, s2_union)
    kv = kv_bytes_per_step(model, s.batch_size, s.input_tokens + s.max_new_tokens / 2)
    res = {"name": name, **facts, **summarize(runs, s.batch_size, s.input_tokens, s.save_per_iter)}
    res["bytes_per_step"] = weights + kv
    res["weight_bytes_per_step"] = weights
    res["kv_bytes_per_step"] = kv
    res["activation_sparsity_union_est"] = s2_union
    tpot_s = res["mean_tpot_ms"] / 1e3
    res["bandwidth_gbs"] = res["bytes_per_step"] / tpot_s / 1e9 if tpot_s > 0 else float("nan")
    res["floor_tpot_ms"] = res["bytes_per_step"] / (bandwidth_gbs * 1e9) * 1e3
    res["pct_of_floor"] = 100.0 * res["floor_tpot_ms"] / res["mean_tpot_ms"] if res["mean_tpot_ms"] else float("nan")
    return res


def add_speedups(results: dict[str, dict], dense_key: str = "dense") -> None:
    """``speedup_tpot_vs_dense`` (dense TPOT / TPOT), ``speedup_ttft_vs_dense``, ``ttft_ratio_vs_dense``."""
    dense = results.get(dense_key)
    if dense is None:
        return
    for r in results.values():
        r["speedup_tpot_vs_dense"] = dense["mean_tpot_ms"] / r["mean_tpot_ms"]
        r["speedup_ttft_vs_dense"] = dense["mean_ttft_ms"] / r["mean_ttft_ms"]
        r["ttft_ratio_vs_dense"] = r["mean_ttft_ms"] / dense["mean_ttft_ms"]


def run(s: Settings, progress: Progress | None = None) -> dict:
    """Run the benchmark; returns the result dict (the JSON)."""
    import torch

    from sparsekit.env import environment
    from sparsekit.models import resolve_dtype

    device = validate(s)
    dtype = resolve_dtype(s.dtype, device)
    mode = s.mode or ("graph" if device.type == "cuda" else "eager")
    torch.manual_seed(s.seed)
    subject = prepare(s, device, dtype)
    model = subject.model
    prompt = _prompt(model, s.batch_size, s.input_tokens, s.seed, device)
    bw = device_bandwidth_gbs(device)

    # dense-form runs first for models that start dense (in-place conversion frees dense weights
    # after), sparse-form first for converted models (densified in place after)
    plan = []
    primary = subject.label if subject.is_sparse else "dense"
    if subject.is_sparse:
        sparse_run = [(primary, "sparse", "owned")]
        dense_runs = [(b, "dense", "owned" if b == "dense" else "hf") for b in s.baselines]
        plan = sparse_run + dense_runs if subject.state == "sparse" else dense_runs + sparse_run
    else:
        plan = [(primary, "dense", "owned")] + [("hf", "dense", "hf") for b in s.baselines if b == "hf"]
    notes = list(subject.warnings)
    if not subject.is_sparse and "dense" in s.baselines:
        notes.append("the model is dense, so it is its own dense baseline (speedup 1.0).")

    results: dict[str, dict] = {}
    for name, form, harness in plan:
        subject.to_sparse() if form == "sparse" else subject.to_dense()
        label = name if harness == "owned" else "hf generate (static cache)"
        key = "hf" if harness == "hf" else ("dense" if form == "dense" else "sparse")
        s2 = subject.activation_sparsity if form == "sparse" else 0.0
        results[key] = measure(model, prompt, s, name=label, harness=harness, mode=mode, bandwidth_gbs=bw,
                               activation_sparsity=s2, progress=progress)
        if form == "sparse":
            results[key].update(format=subject.fmt, weight_sparsity=subject.weight_sparsity, activation_sparsity=s2)
    main_key = "sparse" if subject.is_sparse else "dense"
    add_speedups(results)
    out = {
        **{k: v for k, v in results[main_key].items()},
        "model": s.model,
        "timing_device": "cuda" if device.type == "cuda" else "cpu",
        "device_bandwidth_gbs": bw,
        "settings": {**asdict(s), "baselines": list(s.baselines), "mode": mode, "compile": compile_enabled(s, mode),
                     "autotune": autotune_enabled(s, mode),
                     "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                     "device": str(device), "kind": subject.kind, "prefill_activation_sparsity": False,
                     "structure": subject.structure,
                     "cpu_threads": torch.get_num_threads()},
        "runs": results,
        "conversion": subject.conversion,
        "environment": environment(),
        "warnings": notes,
    }
    return out


def write(result: dict, outdir: Path, name: str = "bench.json") -> Path:
    from sparsekit.formats.checkpoint import write_json_atomic

    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create --outdir {outdir}: {exc.strerror}.") from exc
    path = outdir / name
    write_json_atomic(path, result)
    return path


def check_outdir(outdir: Path | None) -> None:
    if outdir is None:
        return
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise BadInput(f"--outdir {outdir} exists and is not a directory.")


TABLE_ROWS = [  # (row label, key, format)
    ("TTFT mean (ms)", "mean_ttft_ms", "{:.2f}"), ("TTFT median (ms)", "median_ttft_ms", "{:.2f}"),
    ("TTFT p90 (ms)", "p90_ttft_ms", "{:.2f}"),
    ("TPOT mean (ms)", "mean_tpot_ms", "{:.3f}"), ("TPOT median (ms)", "median_tpot_ms", "{:.3f}"),
    ("TPOT p90 (ms)", "p90_tpot_ms", "{:.3f}"),
    ("decode tokens/s", "decode_throughput", "{:.1f}"), ("output tokens/s", "output_throughput", "{:.1f}"),
    ("GB/s", "bandwidth_gbs", "{:.1f}"), ("floor TPOT (ms)", "floor_tpot_ms", "{:.3f}"),
    ("% of floor", "pct_of_floor", "{:.0f}%"),
    ("TPOT speedup vs dense", "speedup_tpot_vs_dense", "{:.2f}x"), ("TTFT / dense TTFT", "ttft_ratio_vs_dense", "{:.2f}x"),
]


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    """The summary table: a column per variant (sparse, dense, hf), a row per metric."""
    runs = [result["runs"][k] for k in ("sparse", "dense", "hf") if k in result["runs"]]
    header = ["metric"] + [r["name"] for r in runs]
    rows = []
    for label, key, fmt in TABLE_ROWS:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for r in runs]
        if any(c != "-" for c in cells):
            rows.append([label] + cells)
    rows.append(["decode step"] + [_step_kind(r) for r in runs])
    return header, rows


def _step_kind(r: dict) -> str:
    """How the variant's decode step ran: compiled, graph-replayed, fused groups."""
    if r.get("mode", "").startswith("transformers"):
        return "transformers"
    parts = [("compiled, autotuned" if r.get("autotune") else "compiled") if r.get("compiled") else "uncompiled",
             "graph" if r.get("decode_graph") else "eager"]
    if r.get("fused_groups"):
        parts.append("fused")
    if r.get("glu_fused"):
        parts.append("SwiGLU in down")
    return ", ".join(parts)
