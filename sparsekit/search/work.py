"""One unit of search work: one weight sparsity s1, pruned and calibrated once, then evaluated at
every activation sparsity s2 its rows need. Runs in the main process or in a per-device worker.

Cache layout (inside the search dir), so a resumed search skips what is done::

    cache/s1_0.3/model/         the pruned model (HF checkpoint + sparsekit.json, via save_pruned)
    cache/s1_0.3/calibration/   the calibration of the pruned model (Calibration.save)
    cache/s1_0.0/calibration/   s1 = 0 uses the original model, so only its calibration is cached
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sparsekit.errors import BadInput
from sparsekit.search.plan import Config, Settings
from sparsekit.search.results import Result

Emit = Callable[[str, object], None]  # ("stage", str) | ("fraction", float) | ("row", Result)


@dataclass
class Job:
    """What every unit shares: the settings, where the caches live, and the token data."""

    settings: Settings
    cache: Path
    samples: torch.Tensor  # [nsamples, seqlen] calibration tokens
    tokens: torch.Tensor  # [1, N] evaluation tokens


@dataclass
class Unit:
    s1: float
    configs: list[Config] = field(default_factory=list)  # the rows still to evaluate


def unit_dir(cache: Path, s1: float) -> Path:
    return Path(cache) / f"s1_{s1!r}"


def units_for(todo: list[Config]) -> list[Unit]:
    units: dict[float, Unit] = {}
    for config in sorted(todo):
        units.setdefault(config.s1, Unit(config.s1)).configs.append(config)
    return list(units.values())


def _layers(emit: Emit, what: str):
    return lambda i, n: emit("stage", f"{what} layer {i}/{n}")


def _cached_model(path: Path, dtype: torch.dtype):
    from sparsekit.formats.checkpoint import verify
    from sparsekit.models import load_model

    if not path.is_dir():
        return None
    try:
        verify(path)
        model, _ = load_model(str(path), device="cpu", dtype=dtype)
    except BadInput:  # tampered with or incomplete: compute it again
        shutil.rmtree(path, ignore_errors=True)
        return None
    return model


def prepare(job: Job, s1: float, device: torch.device, emit: Emit):
    """The model pruned at ``s1`` and its calibration, from the cache or computed (and cached)."""
    from sparsekit import activation, pruning
    from sparsekit.models import load_model, resolve_dtype

    st = job.settings
    dtype = resolve_dtype(st.dtype, device)
    here = unit_dir(job.cache, s1)
    tag = f"s1={s1:g}:"
    model = None
    if s1 > 0:
        model = _cached_model(here / "model", dtype)
        if model is None:
            emit("stage", f"{tag} loading")
            model, tokenizer = load_model(st.model, device="cpu", dtype=dtype)
            torch.manual_seed(st.seed)
            report = pruning.prune_model(model, job.samples, method=st.method, sparsity=s1, structure=st.structure,
                                         device=device, progress=_layers(emit, f"{tag} {st.method} pruning"))
            prune_settings = {"method": st.method, "sparsity": s1, "structure": st.structure,
                              "calib_dataset": st.calib_dataset, "nsamples": st.nsamples, "seqlen": st.seqlen,
                              "seed": st.seed, "model": st.model, "made_by": "sparsekit search"}
            pruning.save_pruned(model, tokenizer, here / "model", report, prune_settings)
    if model is None:
        emit("stage", f"{tag} loading")
        model, _ = load_model(st.model, device="cpu", dtype=dtype)
    calibration = None
    if (here / "calibration").is_dir():
        try:
            calibration = activation.Calibration.load(here / "calibration", model=model)
        except BadInput:
            shutil.rmtree(here / "calibration", ignore_errors=True)
    if calibration is None:
        torch.manual_seed(st.seed)
        calibration = activation.calibrate_model(model, job.samples, device=device, greedy=st.greedy,
                                                 progress=_layers(emit, f"{tag} calibrating"))
        calibration.save(here / "calibration")
    return model, calibration


def evaluate(job: Job, model, calibration, config: Config, emit: Emit) -> Result:
    """Perplexity of ``model`` with activation sparsity ``config.s2`` (none at s2 = 0)."""
    from sparsekit.activation import apply_thresholds
    from sparsekit.evaluate import perplexity

    st = job.settings
    where = "dense" if config.dense else f"total {config.total:g}"
    emit("stage", f"s1={config.s1:g}: evaluating s2={config.s2:.3f} ({where})")
    handle = None
    if config.s2 > 0:  # every token sparsified, as in the SPDP sweeps' Uniform_PPL
        handle = apply_thresholds(model, calibration.thresholds(config.s2, greedy=st.greedy), prefill="all")
    try:
        ppl = perplexity(model, job.tokens, st.seqlen, dataset=st.eval_dataset, max_windows=st.eval_windows,
                         progress=lambda i, n: emit("fraction", i / n))
    finally:
        if handle is not None:
            handle.remove()
    return Result(config, ppl.ppl)


def run_unit(job: Job, unit: Unit, device: torch.device, emit: Emit) -> None:
    """Prepare the unit's model once, then evaluate each of its rows, emitting ("row", Result)."""
    model, calibration = prepare(job, unit.s1, device, emit)
    model.to(device)
    try:
        for config in unit.configs:
            emit("row", evaluate(job, model, calibration, config, emit))
    finally:
        del model, calibration
        if device.type == "cuda":
            torch.cuda.empty_cache()
