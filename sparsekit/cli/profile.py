"""sparsekit profile."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "profile"


def command(
    model: o.Model = "demo",
    baseline: Annotated[Optional[str], typer.Option(help="dense: profile the dense model too, side by side.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=2, help="Decode steps profiled.")] = 32,
    input_tokens: Annotated[int, typer.Option(min=1, help="Prompt length.")] = 32,
    nsys: Annotated[bool, typer.Option("--nsys", help="Run under Nsight Systems (needs nsys on PATH).")] = False,
    weight_sparsity: Annotated[float, typer.Option("--weight-sparsity", help="Synthetic models: weight sparsity S1.")] = 0.0,
    activation_sparsity: Annotated[float, typer.Option("--activation-sparsity", help="Synthetic models: activation sparsity S2.")] = 0.0,
    format: Annotated[str, typer.Option("--format", help="Synthetic models: weight format.")] = "dense",
    outdir: Annotated[Path, typer.Option(help="Where per_token.csv, summary.json, the trace and plots go.")] = Path("sparsekit-profile"),
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Break decode time per token into attention, selection, matmuls and the rest."""
    from sparsekit import profiling
    from sparsekit.bench import parse_baselines

    settings = profiling.ProfileSettings(
        model=model, baselines=parse_baselines(baseline), max_new_tokens=max_new_tokens, input_tokens=input_tokens,
        nsys=nsys, weight_sparsity=weight_sparsity, activation_sparsity=activation_sparsity, format=format,
        outdir=str(outdir), device=device, dtype=dtype.value, seed=seed,
    )
    with _progress_bar() as bar:
        task = bar.add_task("loading", total=None)

        def on_progress(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        summary = profiling.run(settings, progress=on_progress)
    _render(summary, json)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]profile[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _render(summary: dict, as_json: bool) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    from sparsekit.nvtx import CATEGORY_LABELS

    err = Console(stderr=True)
    for w in summary.get("warnings", []):
        err.print(f"[yellow]warning:[/] {w}")
    console = Console(stderr=as_json)
    variants = summary["variants"]
    where = "CPU" if summary["device"] == "cpu" else summary["environment"].get("gpu") or summary["device"]
    table = Table(title=f"{summary['model']}: mean time per decode token (ms), {where}, "
                        f"{summary['source']}, mode {summary['mode']}")
    table.add_column("category")
    for label in variants:
        table.add_column(label, justify="right")
    for c in summary["categories"]:
        cells = []
        for v in variants.values():
            ms, tot = v["mean_ms"][c], v["mean_total_ms"]
            cells.append(f"{ms:.3f} ({100 * ms / tot:.0f}%)" if tot else f"{ms:.3f}")
        table.add_row(CATEGORY_LABELS[c], *cells)
    table.add_row("sum", *[f"{v['mean_total_ms']:.3f}" for v in variants.values()], style="bold")
    table.add_row("measured TPOT", *["-" if v["mean_tpot_ms"] is None else f"{v['mean_tpot_ms']:.3f}"
                                     for v in variants.values()])
    table.add_row("adds up (max dev.)", *[("yes" if v["adds_up"] else "NO")
                                          + ("" if v["max_deviation"] is None else f" ({100 * v['max_deviation']:.1f}%)")
                                          for v in variants.values()])
    console.print(table)
    console.print(f"files in {summary['settings']['outdir']}: " + ", ".join(
        str(x) if isinstance(x, str) else ", ".join(x.values()) for x in summary["files"].values()))
    if as_json:
        print(json_module.dumps(summary, indent=2, default=str))
