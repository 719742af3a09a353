"""``run_search``: validate, open (or resume) the search dir, compute the missing rows, write results."""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sparsekit.errors import BadInput
from sparsekit.search import results as res
from sparsekit.search.plan import Config, Settings, check_totals, configs_for, parse_grid
from sparsekit.search.results import Result

MANIFEST = "search.json"
DEMO_EVAL_WINDOWS = 32  # 32 x 512 tokens of held-out text: keeps the demo search within minutes on 2 CPU cores
CACHE = "cache"
OURS = (MANIFEST, res.RESULTS, res.BEST, res.PLOT, CACHE)


@dataclass
class Progress:
    """What the caller's progress callback gets: rows done (fractional), rows to do, what is running."""

    done: float
    total: int
    stage: str
    row: Result | None = None


@dataclass
class Outcome:
    directory: Path
    settings: Settings
    results: dict[Config, Result]
    computed: int  # rows computed by this run (the others were on disk)
    seconds: float
    protocol: str  # how perplexity was measured

    def summary(self) -> dict:
        return res.summary(self.results, self.settings) | {"protocol": self.protocol, "directory": str(self.directory),
                                                           "computed": self.computed, "seconds": round(self.seconds, 2)}


def _model_id(name: str) -> str:
    from sparsekit.models import resolve_model_path

    path = resolve_model_path(name)
    return name if name == "demo" or not Path(path).is_dir() else str(Path(path).resolve())


def make_settings(*, model: str, method: str, structure: str, greedy: bool, calib_dataset: str, eval_dataset: str,
                  nsamples: int, seqlen: int | None, eval_windows: int | None, seed: int, dtype: str, device) -> Settings:
    from sparsekit.data import check_source
    from sparsekit.models import default_seqlen, load_config, resolve_dtype, signature

    config = load_config(model)
    if eval_windows is None and model == "demo":
        eval_windows = DEMO_EVAL_WINDOWS
    if eval_windows is not None and eval_windows < 1:
        raise BadInput(f"--eval-windows must be at least 1, got {eval_windows}.")
    return Settings(
        model=_model_id(model), model_signature=signature(config), method=str(getattr(method, "value", method)),
        structure=structure, greedy=bool(greedy), calib_dataset=check_source(calib_dataset),
        eval_dataset=check_source(eval_dataset), nsamples=int(nsamples), seqlen=default_seqlen(config, seqlen),
        eval_windows=eval_windows, seed=int(seed),
        dtype=str(resolve_dtype(getattr(dtype, "value", dtype), device)).removeprefix("torch."),
    )


def parse_devices(device: str, devices: str | None) -> list:
    from sparsekit.models import resolve_device

    names = [d.strip() for d in devices.split(",") if d.strip()] if devices else [device]
    if not names:
        raise BadInput("--devices is empty; give comma-separated devices such as cuda:0,cuda:1.")
    return [resolve_device(n) for n in names]


def check_dir(out: Path, settings: Settings, force: bool) -> bool:
    """Refuse a dir holding something else, or a search with other settings unless ``force``.

    Returns whether the dir holds a search to discard (other settings, ``force`` given). Reads only.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory.")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise BadInput(f"--out {out} is not empty and holds no {MANIFEST}, so it is not a search dir; "
                       "choose another directory.")
    try:
        saved = json.loads(manifest.read_text())
        diff = settings.differences(saved.get("settings", {}))
    except (json.JSONDecodeError, AttributeError):
        diff = [f"{MANIFEST} unreadable"]
    if diff and not force:
        raise BadInput(f"--out {out} holds a search made with other settings ({', '.join(diff)}); "
                       "use --force to discard it or choose another directory.")
    return bool(diff)


def claim_dir(out: Path, settings: Settings, discard: bool) -> None:
    """Create the search dir (first discarding an earlier search's files if asked) and fix its settings."""
    from sparsekit.formats.checkpoint import write_json_atomic

    out = Path(out)
    if discard:
        for name in OURS:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).is_file():
        write_json_atomic(out / MANIFEST, {"kind": "search", "settings": settings.as_dict()})


def load_data(settings: Settings):
    """Calibration samples and evaluation tokens (checked here, before anything is written)."""
    from transformers import AutoTokenizer

    from sparsekit.data import calibration_samples, eval_tokens
    from sparsekit.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(settings.model))
    samples = calibration_samples(settings.calib_dataset, tokenizer, settings.nsamples, settings.seqlen, settings.seed)
    tokens = eval_tokens(settings.eval_dataset, tokenizer,  # only the windows that are scored
                         settings.eval_windows * settings.seqlen if settings.eval_windows else None)
    if tokens.numel() < settings.seqlen:
        raise BadInput(f"evaluation text {settings.eval_dataset!r} has {tokens.numel()} tokens, "
                       f"fewer than one window of {settings.seqlen}.")
    return samples, tokens


def protocol(settings: Settings, tokens) -> str:
    from sparsekit.evaluate import Perplexity

    windows = tokens.numel() // settings.seqlen
    return Perplexity(math.nan, math.nan, windows * (settings.seqlen - 1), windows, settings.seqlen,
                      settings.eval_dataset).protocol


def run_search(*, totals, s1_grid: str | None = None, model: str = "demo", method: str = "wanda",
               structure: str = "unstructured", greedy: bool = False, calib_dataset: str = "demo",
               eval_dataset: str = "demo", nsamples: int = 32, seqlen: int | None = None,
               eval_windows: int | None = None, seed: int = 0, dtype: str = "auto", device: str = "auto",
               devices: str | None = None, out: Path, force: bool = False,
               on_progress: Callable[[Progress], None] | None = None) -> Outcome:
    """Find the best split of each total sparsity budget between weights (s1) and activations (s2).

    Every (total, s1) row missing from ``out/results.csv`` is computed; each s1 is pruned and
    calibrated once (cached under ``out/cache``) and evaluated at every s2 its rows need.
    """
    from sparsekit.pruning import check_settings, parse_structure
    from sparsekit.search.pool import run_units
    from sparsekit.search.work import Job, units_for

    start = time.perf_counter()
    totals = check_totals(totals)
    grid = parse_grid(s1_grid)
    nm = parse_structure(structure)
    check_settings(method, None if nm else 0.0, structure)  # the method name
    configs = configs_for(totals, grid, nm)
    devs = parse_devices(device, devices)
    settings = make_settings(model=model, method=method, structure=structure, greedy=greedy,
                             calib_dataset=calib_dataset, eval_dataset=eval_dataset, nsamples=nsamples,
                             seqlen=seqlen, eval_windows=eval_windows, seed=seed, dtype=dtype, device=devs[0])
    out = Path(out)
    discard = check_dir(out, settings, force)
    samples, tokens = load_data(settings)
    claim_dir(out, settings, discard)

    found = res.read_results(out)
    todo = [c for c in configs if c not in found]
    state = {"rows": 0, "fraction": {}, "stage": {}}

    def on_event(worker: int, kind: str, payload) -> None:
        row = None
        if kind == "row":
            row = payload
            found[row.config] = row
            res.write_results(out, found, settings)
            res.write_best(out, found, settings)
            state["rows"] += 1
            state["fraction"][worker] = 0.0
        elif kind == "fraction":
            state["fraction"][worker] = payload
        elif kind == "stage":
            state["stage"][worker] = payload
        if on_progress is not None:
            done = min(len(todo), state["rows"] + sum(state["fraction"].values()))
            stages = state["stage"]
            stage = " | ".join(f"{devs[w]}: {s}" for w, s in sorted(stages.items())) if len(devs) > 1 else stages.get(0, "")
            on_progress(Progress(done, len(todo), stage, row))

    if on_progress is not None:
        on_progress(Progress(0, len(todo), "starting"))
    if todo:
        job = Job(settings=settings, cache=out / CACHE, samples=samples, tokens=tokens)
        run_units(job, units_for(todo), devs, on_event)
    res.write_results(out, found, settings)
    res.write_best(out, found, settings)
    res.plot(out, found, settings)
    return Outcome(out, settings, found, state["rows"], time.perf_counter() - start, protocol(settings, tokens))
