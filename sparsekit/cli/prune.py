"""sparsekit prune."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "prune"


def command(
    out: o.OutDir,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", help="Weight sparsity S1 in [0, 1); optional with N:M and N:M-out (it is N/M).")] = None,
    method: Annotated[o.Method, typer.Option(help="Pruning method.")] = o.Method.wanda,
    structure: Annotated[str, typer.Option(help="unstructured; N:M (N of every M consecutive inputs of each row zeroed) such as 2:4 or 4:8; or N:M-out (N of every M consecutive output rows of each column zeroed) such as 2:4-out.")] = "unstructured",
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    nsamples: o.NSamples = 128,
    seqlen: o.SeqLen = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Linear names to leave dense: a glob such as '*.down_proj' or 're:REGEX' (repeatable).")] = None,
    eval: Annotated[bool, typer.Option("--eval", help="Report perplexity before and after.")] = False,
    eval_dataset: Annotated[str, typer.Option(help="Text for --eval: wikitext2, demo, or a local file.")] = "demo",
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Prune weights with Wanda, SparseGPT or magnitude, layer by layer."""
    from sparsekit.pruning.run import run_prune

    with _progress_bar() as bar:
        task = bar.add_task("loading", total=None)

        def on_progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        outcome = run_prune(out=out, model=model, method=method.value, sparsity=sparsity, structure=structure,
                            calib_dataset=calib_dataset, nsamples=nsamples, seqlen=seqlen, seed=seed, ignore=ignore,
                            eval=eval, eval_dataset=eval_dataset, device=device, dtype=dtype.value,
                            on_progress=on_progress)
    _render(outcome, json)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]prune[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=Console(stderr=True), transient=True)


def _render(outcome, as_json: bool) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    from sparsekit.models import ROLES

    r, m = outcome.report, outcome.manifest
    console = Console(stderr=as_json)
    table = Table(title=f"{r.method} {r.structure} at sparsity {r.sparsity:g}: achieved sparsity per decoder layer")
    table.add_column("layer", justify="right")
    for role in ROLES:
        table.add_column(role, justify="right")
    table.add_column("all", justify="right", style="bold")
    for i, layer_sparsity in enumerate(r.per_layer):
        cells = [f"{r.per_linear[f'model.layers.{i}.{path}']:.3f}" for path in ROLES.values()]
        table.add_row(str(i), *cells, f"{layer_sparsity:.3f}")
    console.print(table)
    peak = "n/a (cpu)" if r.peak_device_bytes is None else f"{r.peak_device_bytes / 2**30:.2f} GiB"
    calib = "none (magnitude)" if m.get("calib_dataset") is None else f"{m['calib_dataset']}, {m['nsamples']} x {m['seqlen']} tokens"
    console.print(f"overall {r.overall:.4f} of decoder linear weights are zero; calibration: {calib}; "
                  f"{r.seconds:.1f} s; peak device memory {peak}; written to {outcome.out}")
    if r.ignored:
        console.print(f"left dense (--ignore): {len(r.ignored)} linears")
    if outcome.ppl_before is not None:
        b, a = outcome.ppl_before, outcome.ppl_after
        console.print(f"perplexity before {b.ppl:.3f}, after {a.ppl:.3f} ({a.ppl / b.ppl:.3f}x) on {a.protocol}")
    if as_json:
        print(json_module.dumps(outcome.summary(), indent=2))
