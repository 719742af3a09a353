"""sparsekit search."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "search"


def command(
    total: Annotated[list[float], typer.Option("--total", help="Total sparsity budget F in (0, 1) (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="Search directory (results.csv, best.json, plot, caches).")] = Path("sparsekit-search"),
    s1_grid: Annotated[Optional[str], typer.Option("--s1-grid", help="Comma-separated weight sparsities to try (default: 0,0.1,...,0.9 up to each total); s1 = 0 and s1 = F are always tried.")] = None,
    method: Annotated[o.Method, typer.Option(help="Pruning method.")] = o.Method.wanda,
    structure: Annotated[str, typer.Option(help="unstructured, N:M or N:M-out (N:M and N:M-out fix s1 = N/M, so it is not searched).")] = "unstructured",
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy per-layer activation allocation instead of uniform.")] = False,
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    eval_dataset: Annotated[str, typer.Option(help="wikitext2, demo, or a local file.")] = "demo",
    nsamples: o.NSamples = 32,
    seqlen: o.SeqLen = None,
    eval_windows: Annotated[Optional[int], typer.Option(
        min=1, help="Evaluation windows of --seqlen tokens (default: 32 for the demo model, all for others).")] = None,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated devices, one worker each (cuda:0,cuda:1).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a search dir made with other settings.")] = False,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Find the best split of a total sparsity budget between weights and activations."""
    from sparsekit.search import run_search

    bar = _progress_bar()
    task = None

    def on_progress(p) -> None:  # the bar appears once the input is validated and work starts
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("starting", total=None)
        bar.update(task, completed=p.done if p.total else 1, total=max(p.total, 1), description=p.stage)
        if p.row is not None:
            c = p.row.config
            where = "dense" if c.dense else f"total {c.total:g}"
            bar.console.print(f"{where}: s1={c.s1:g} s2={c.s2:.4f} PPL {p.row.ppl:.3f}")

    try:
        outcome = run_search(totals=total, s1_grid=s1_grid, model=model, method=method.value, structure=structure,
                             greedy=greedy, calib_dataset=calib_dataset, eval_dataset=eval_dataset,
                             nsamples=nsamples, seqlen=seqlen, eval_windows=eval_windows, seed=seed,
                             dtype=dtype.value, device=device, devices=devices, out=out, force=force,
                             on_progress=on_progress)
    finally:
        bar.stop()
    _render(outcome, json)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]search[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                    console=Console(stderr=True), transient=False)


def _render(outcome, as_json: bool) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    from sparsekit.search import best_per_total, by_total

    results, st = outcome.results, outcome.settings
    console = Console(stderr=as_json)
    dense = next((r for c, r in results.items() if c.dense), None)
    best = best_per_total(results)
    for total, rows in by_total(results).items():
        table = Table(title=f"total sparsity {total:g}: {st.method} ({st.structure}) x TEAL "
                            f"({'greedy' if st.greedy else 'uniform'})", caption=f"PPL on {outcome.protocol}")
        for col in ("s1 (weights)", "s2 (activations)", "PPL", "vs dense", ""):
            table.add_column(col, justify="right")
        shown = ([dense] if dense else []) + rows
        for r in shown:
            ratio = f"{r.ppl / dense.ppl:.3f}x" if dense else ""
            mark = "dense" if r.config.dense else ("<- best" if r is best[total] else "")
            style = "bold green" if r is best[total] else ("dim" if r.config.dense else None)
            table.add_row(f"{r.config.s1:g}", f"{r.config.s2:.4f}", f"{r.ppl:.3f}", ratio, mark, style=style)
        console.print(table)
    console.print(f"{len(results)} rows in {outcome.directory}/results.csv ({outcome.computed} computed now, "
                  f"{outcome.seconds:.1f} s); best.json and ppl_vs_sparsity.png written.")
    if as_json:
        print(json_module.dumps(outcome.summary(), indent=2))
