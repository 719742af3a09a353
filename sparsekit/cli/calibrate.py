"""sparsekit calibrate."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "calibrate"


class Prefill(str, Enum):
    all = "all"
    later_half = "later-half"


class Rule(str, Enum):
    relative = "relative"
    absolute = "absolute"


def command(
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory for the calibration (created; must be empty or an earlier calibration).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Use an earlier calibration dir instead of calibrating (with --sparsity / --eval).")] = None,
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    nsamples: o.NSamples = 64,
    seqlen: o.SeqLen = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Also compute (or use) the greedy per-layer allocation.")] = False,
    sparsity: Annotated[Optional[list[float]], typer.Option("--sparsity", help="Activation sparsity S2 in [0, 1) to show thresholds for (repeatable).")] = None,
    eval: Annotated[bool, typer.Option("--eval", help="With --sparsity: perplexity and achieved sparsity per site on held-out text.")] = False,
    eval_dataset: Annotated[str, typer.Option(help="Held-out text for --eval: wikitext2, demo, or a local file.")] = "demo",
    prefill: Annotated[Prefill, typer.Option(help="Perplexity windows: sparsify every token (all) or only the later half of each window; decode tokens are always sparsified.")] = Prefill.all,
    threshold_rule: Annotated[Rule, typer.Option(help="relative: the o_proj input (the attention output, no norm before it) keeps x where |x| > t x the token's mean |x|, which holds the target sparsity when the text's scale shifts; absolute: |x| > t everywhere, as TEAL. Ignored with --calibration (its rule is recorded).")] = Rule.relative,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Record activation histograms (TEAL) and derive thresholds for any activation sparsity."""
    from sparsekit.activation.run import run_calibrate

    with _progress_bar() as bar:
        task = bar.add_task("loading", total=None)

        def on_progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        outcome = run_calibrate(out=out, calibration=calibration, model=model, calib_dataset=calib_dataset,
                                nsamples=nsamples, seqlen=seqlen, greedy=greedy, sparsities=sparsity or (),
                                eval=eval, eval_dataset=eval_dataset, prefill=prefill.value, device=device,
                                dtype=dtype.value, seed=seed, rule=threshold_rule.value, on_progress=on_progress)
    _render(outcome, json)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]calibrate[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=Console(stderr=True), transient=True)


def _site_table(outcome, mode: str, s2: float, row):
    from rich.table import Table

    from sparsekit.models import SITES

    cal = outcome.calibration
    th, exp = outcome.thresholds[mode][s2], outcome.expected[mode][s2]
    rule = "; at o, |x| > t x mean|x| of the token" if cal.relative_names() else ""
    table = Table(title=f"{mode} thresholds at S2 = {s2:g} (keep x where |x| > t{rule})")
    for col in ("layer", "site" if mode == "uniform" else "linear", "threshold", "target"):
        table.add_column(col, justify="left" if col in ("site", "linear") else "right")
    if row is not None:
        table.add_column("achieved", justify="right")
        table.add_column("Δ", justify="right")
    for i, layer in enumerate(cal.names):
        groups = [(site, roles[0]) for site, roles in SITES.items()] if mode == "uniform" else [(r, r) for r in layer]
        for label, role in groups:
            name = layer[role]
            cells = [str(i), label, f"{th[name]:.5g}", f"{exp[name]:.4f}"]
            if row is not None:
                a = row.achieved.get(name, float("nan"))
                d = a - exp[name]
                cells += [f"{a:.4f}", f"[{'red' if abs(d) > 0.01 else 'green'}]{d:+.4f}[/]"]
            table.add_row(*cells)
    return table


def _render(outcome, as_json: bool) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    from sparsekit.activation.run import prefill_text

    console = Console(stderr=as_json)
    cal, s = outcome.calibration, outcome.settings
    rows = {(r.mode, r.s2): r for r in outcome.rows if r.mode != "dense"}
    s2s = sorted({s2 for by in outcome.thresholds.values() for s2 in by})
    if len(s2s) == 1:
        for mode in outcome.thresholds:
            console.print(_site_table(outcome, mode, s2s[0], rows.get((mode, s2s[0]))))
    if outcome.rows:
        dense = outcome.rows[0].ppl
        table = Table(title="perplexity at activation sparsity S2; achieved sparsity on the evaluation text with every threshold on")
        for col in ("mode", "S2", "perplexity", "× dense", "effective", "layers (effective)", "worst linear |Δ|"):
            table.add_column(col, justify="left" if col.startswith(("mode", "worst")) else "right")
        for r in outcome.rows:
            per_layer = r.layer_effective(cal.names)
            name, dev = r.worst
            worst = "" if r.mode == "dense" else f"{abs(dev):.4f} ({name.removeprefix('model.layers.')})"
            table.add_row(r.mode, f"{r.s2:g}", f"{r.ppl.ppl:.3f}", f"{r.ppl.ppl / dense.ppl:.3f}", f"{r.effective():.4f}",
                          f"{min(per_layer):.3f}-{max(per_layer):.3f}", worst)
        console.print(table)
        console.print(f"{prefill_text(outcome.prefill)}; {dense.protocol}")
    where = f"written to {outcome.out}" if outcome.out is not None else f"read from {outcome.source}"
    timing = ""
    if outcome.out is not None:
        peak = cal.info.get("peak_device_bytes")
        peak = "n/a (cpu)" if peak is None else f"{peak / 2**30:.2f} GiB"
        timing = f"; {cal.info.get('seconds', 0):.1f} s, peak device memory {peak}"
    console.print(f"calibration of {s['model']} on {s.get('calib_dataset')}, {s.get('nsamples')} x {s.get('seqlen')} tokens"
                  f"{', with greedy allocation' if cal.greedy is not None else ''}, {cal.rule} thresholds{timing}; {where}")
    if as_json:
        print(json_module.dumps(outcome.summary(), indent=2, default=str))
