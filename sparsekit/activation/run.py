"""``sparsekit calibrate`` as a function: validate, load, calibrate (or read a calibration), save, evaluate.

Everything the user asked for is checked before the model is loaded and before anything is
written. The model is loaded on the CPU; ``calibrate_model`` brings one decoder layer at a time to
the compute device. ``--eval`` moves the whole model to the device for the perplexity runs, with
the thresholds put on by ``apply_thresholds`` (which also counts the achieved sparsity per linear).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sparsekit.errors import BadInput, Failure, check_fraction


# on_progress(stage, done, total): total is None while unknown
OnProgress = Callable[[str, int, "int | None"], None]


@dataclass
class EvalRow:
    mode: str  # "dense", "uniform" or "greedy"
    s2: float
    ppl: object  # evaluate.Perplexity
    achieved: dict[str, float]  # per linear, on the evaluation text, every threshold on
    expected: dict[str, float]  # per linear, what the calibration promises
    weights: dict[str, int] = field(default_factory=dict)  # per linear, its parameter count

    def effective(self, names=None) -> float:
        """Parameter-weighted achieved sparsity (the fraction of weight reads skipped) over ``names``."""
        names = list(self.achieved if names is None else names)
        total = sum(self.weights.get(n, 1) for n in names)
        return sum(self.achieved[n] * self.weights.get(n, 1) for n in names) / max(total, 1)

    def layer_effective(self, layers: list[dict[str, str]]) -> list[float]:
        return [self.effective(layer.values()) for layer in layers]

    @property
    def worst(self) -> tuple[str, float]:
        """The linear whose achieved sparsity is farthest from the expected one, and the difference."""
        if not self.achieved:
            return "", 0.0
        name = max(self.achieved, key=lambda n: abs(self.achieved[n] - self.expected[n]))
        return name, self.achieved[name] - self.expected[name]

    def as_dict(self) -> dict:
        name, dev = self.worst
        return {"mode": self.mode, "s2": self.s2, "perplexity": self.ppl.as_dict(), "effective": self.effective(),
                "achieved": self.achieved, "expected": self.expected, "worst_linear": name, "worst_deviation": dev}


@dataclass
class CalibrateOutcome:
    calibration: object  # thresholds.Calibration
    settings: dict
    out: Path | None = None  # where the calibration was written (None when read with --calibration)
    source: Path | None = None
    prefill: str = "all"
    thresholds: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)  # mode -> s2 -> name -> t
    expected: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)
    rows: list[EvalRow] = field(default_factory=list)

    def summary(self) -> dict:
        info = self.calibration.info
        return {
            "out": None if self.out is None else str(self.out),
            "calibration": None if self.source is None else str(self.source),
            **self.settings,
            "seconds": info.get("seconds"),
            "peak_device_bytes": info.get("peak_device_bytes"),
            "prefill": self.prefill,
            "thresholds": {mode: {str(s2): t for s2, t in by.items()} for mode, by in self.thresholds.items()},
            "relative_thresholds": sorted(self.calibration.relative_names()),
            "eval": [row.as_dict() for row in self.rows],
        }


def prefill_text(prefill: str) -> str:
    where = {"all": "every token of each window", "later_half": "positions >= seqlen/2 of each window",
             "none": "no prefill token"}[prefill]
    return f"prefill: {where} sparsified; decode tokens (one per step) are always sparsified"


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def _model_manifest(model: str) -> dict | None:
    from sparsekit.formats.checkpoint import read_manifest

    path = Path(model).expanduser()
    if model == "demo" or not path.is_dir():
        return None
    manifest = read_manifest(path)
    if manifest is None:
        return None
    return {k: v for k, v in manifest.items() if k in ("kind", "model", "method", "sparsity", "structure", "format")}


def run_calibrate(*, out: Path | None = None, calibration: Path | None = None, model: str = "demo",
                  calib_dataset: str = "demo", nsamples: int = 64, seqlen: int | None = None, greedy: bool = False,
                  sparsities=(), eval: bool = False, eval_dataset: str = "demo", prefill: str = "all",
                  device: str = "auto", dtype: str = "auto", seed: int = 0, rule: str = "relative",
                  on_progress: OnProgress | None = None) -> CalibrateOutcome:
    from sparsekit.formats.checkpoint import check_out_dir

    # cheap checks first: a typo costs no torch import
    on_progress = on_progress or _noop
    dtype = getattr(dtype, "value", dtype)
    sparsities = sorted({float(check_fraction("--sparsity", float(s))) for s in (sparsities or ())})
    if (out is None) == (calibration is None):
        raise BadInput("give exactly one of --out DIR (calibrate now) and --calibration DIR (use an earlier calibration).")
    rule = str(getattr(rule, "value", rule))
    if rule not in ("relative", "absolute"):
        raise BadInput(f"--threshold-rule must be relative or absolute, got {rule!r}.")
    if eval and not sparsities:
        raise BadInput("--eval needs at least one --sparsity S2 to evaluate.")
    if out is not None:
        check_out_dir(Path(out), "calibrate")
    from sparsekit.data import check_source  # (imports torch)

    if out is not None:
        check_source(calib_dataset)
    if eval:
        check_source(eval_dataset)

    import torch

    from sparsekit.activation.calibrate import calibrate_model
    from sparsekit.activation.greedy import GreedySettings
    from sparsekit.activation.sparsify import check_prefill
    from sparsekit.activation.thresholds import Calibration
    from sparsekit.data import calibration_samples, eval_tokens
    from sparsekit.models import default_seqlen, load_config, load_model, resolve_device, resolve_dtype

    prefill = check_prefill(str(getattr(prefill, "value", prefill)))
    top = GreedySettings().max_effective
    if greedy and calibration is None and sparsities and sparsities[-1] > top:
        raise BadInput(f"--greedy allocations go up to activation sparsity {top}; --sparsity {sparsities[-1]} is beyond it.")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    config = load_config(model)  # unsupported architecture / missing dir -> BadInput
    cal = None
    if calibration is not None:
        cal = Calibration.load(calibration)
        cal.check_model(config)
        if greedy and cal.greedy is None:
            raise BadInput(f"the calibration in {calibration} has no greedy allocation; calibrate it with --greedy.")
        seqlen = default_seqlen(config, seqlen if seqlen is not None else cal.info.get("seqlen"))
    else:
        seqlen = default_seqlen(config, seqlen)
    for s2 in sparsities:  # greedy tables recorded short of an S2 -> BadInput now, not after the work
        if cal is not None:
            cal.sparsities(s2, greedy=greedy)

    lm, tokenizer = load_model(model, device="cpu", dtype=torch_dtype)
    torch.manual_seed(seed)
    settings = {"model": model, "model_manifest": _model_manifest(model), "greedy": greedy,
                "dtype": str(torch_dtype).removeprefix("torch."), "device": str(dev)}
    if cal is None:
        on_progress("calibration data", 0, None)
        samples = calibration_samples(calib_dataset, tokenizer, nsamples, seqlen, seed=seed)
        try:
            cal = calibrate_model(lm, samples, device=dev, greedy=greedy, rule=rule,
                                  progress=lambda i, n: on_progress("calibrating", i, n))
        except torch.cuda.OutOfMemoryError as exc:
            raise Failure(f"calibration ran out of memory on {dev} with {nsamples} x {seqlen} tokens; "
                          "lower --nsamples or --seqlen.") from exc
        cal.info.update(model=model, model_manifest=settings["model_manifest"], calib_dataset=calib_dataset,
                        seed=seed, made_by="sparsekit calibrate")
        on_progress("saving", 0, None)
        cal.save(Path(out))
        cal.source = str(out)
    settings.update({k: cal.info.get(k) for k in ("calib_dataset", "nsamples", "seqlen", "seed")})
    settings["threshold_rule"] = cal.rule

    modes = ["uniform"] + (["greedy"] if greedy else [])
    outcome = CalibrateOutcome(calibration=cal, settings=settings, out=None if out is None else Path(out),
                               source=None if calibration is None else Path(calibration), prefill=prefill)
    for mode in modes:
        outcome.thresholds[mode] = {s2: cal.thresholds(s2, greedy=mode == "greedy") for s2 in sparsities}
        outcome.expected[mode] = {s2: cal.expected(s2, greedy=mode == "greedy") for s2 in sparsities}
    if eval:
        outcome.rows = _evaluate(lm, tokenizer, outcome, eval_tokens(eval_dataset, tokenizer), seqlen, eval_dataset,
                                 dev, on_progress)
    return outcome


def _evaluate(lm, tokenizer, outcome: CalibrateOutcome, tokens, seqlen: int, dataset: str, device,
              on_progress: OnProgress) -> list[EvalRow]:
    import torch

    from sparsekit.activation.sparsify import apply_thresholds
    from sparsekit.evaluate import perplexity

    def run(stage: str, thresholds: dict[str, float]):
        with apply_thresholds(lm, thresholds, prefill=outcome.prefill, count=True) as handle:
            ppl = perplexity(lm, tokens, seqlen, dataset=dataset, progress=lambda i, n: on_progress(stage, i, n))
            return ppl, handle.achieved()

    cal = outcome.calibration
    zeros = {name: 0.0 for layer in cal.names for name in layer.values()}
    weights = {layer[r]: cal.params[r] for layer in cal.names for r in layer}
    try:
        lm.to(device)
        dense_ppl, dense_ach = run("perplexity dense", zeros)
        rows = [EvalRow("dense", 0.0, dense_ppl, dense_ach, {n: 0.0 for n in zeros}, weights)]
        for mode, by_s2 in outcome.thresholds.items():
            for s2, thresholds in by_s2.items():
                expected = outcome.expected[mode][s2]
                if all(t <= 0 for t in thresholds.values()):  # S2 = 0: the dense run already is this run
                    rows.append(EvalRow(mode, s2, dense_ppl, dense_ach, expected, weights))
                    continue
                ppl, achieved = run(f"perplexity {mode} S2={s2:g}", thresholds)
                rows.append(EvalRow(mode, s2, ppl, achieved, expected, weights))
    except torch.cuda.OutOfMemoryError as exc:
        raise Failure(f"--eval needs the whole model on {device} and it does not fit; calibrate without --eval "
                      "(calibration itself holds one layer at a time).") from exc
    finally:
        lm.to("cpu")
    return rows
