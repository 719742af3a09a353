"""sparsekit convert."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "convert"


class Format(str, Enum):
    spdp = "spdp"
    spinfer = "spinfer"
    teal = "teal"
    bitmask = "bitmask"
    two_four = "2:4"
    dense = "dense"


def command(
    format: Annotated[Format, typer.Option("--format", help="Weight format to pack into.")],
    out: o.OutDir,
    model: o.Model = "demo",
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration dir from 'sparsekit calibrate'.")] = None,
    activation_sparsity: Annotated[Optional[float], typer.Option("--activation-sparsity", help="Activation sparsity S2 for the thresholds.")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Use the greedy per-layer allocation.")] = False,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Glob pattern of linear names to leave as plain dense nn.Linear, e.g. '*.down_proj' (repeatable).")] = None,
    dtype: o.DTypeOpt = o.DType.auto,
    json: o.Json = False,
) -> None:
    """Pack a (pruned) model into a kernel format with its activation thresholds."""
    import warnings

    from sparsekit.formats.convert import run_convert

    with _progress_bar() as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the outcome carries them; printed below as sentences
        task = bar.add_task("loading", total=None)

        def on_progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        outcome = run_convert(out=out, model=model, fmt=format.value, calibration=calibration,
                              activation_sparsity=activation_sparsity, greedy=greedy, dtype=dtype.value,
                              ignore=tuple(ignore or ()), on_progress=on_progress)
    _render(outcome, json)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]convert[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=Console(stderr=True), transient=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def _render(outcome, as_json: bool) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    m, s = outcome.manifest, outcome.manifest["sizes"]
    console = Console(stderr=as_json)
    err = Console(stderr=True)
    for w in outcome.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    sizes = Table(title=f"{outcome.format}: bytes on disk vs dense ({m['settings']['dtype']})")
    for col in ("tensors", "format", "on disk MiB", "dense MiB", "ratio"):
        sizes.add_column(col, justify="left" if col in ("tensors", "format") else "right")
    n_lin = len(m["per_linear"])
    sizes.add_row(f"decoder linears ({n_lin})", outcome.format, _mib(s["linears_bytes"]), _mib(s["linears_dense_bytes"]),
                  f"{s['linears_bytes'] / max(1, s['linears_dense_bytes']):.3f}")
    if m["ignored"]:
        sizes.add_row(f"left dense (--ignore, {len(m['ignored'])})", "nn.Linear", "", "", "")
    sizes.add_row("embeddings, norms, lm_head", "dense", _mib(s["other_tensor_bytes"]), _mib(s["other_tensor_bytes"]), "1.000")
    sizes.add_row("[bold]tensor files[/]", "", _mib(s["tensor_files_bytes"]), _mib(s["dense_model_bytes"]),
                  f"{s['tensor_files_bytes'] / max(1, s['dense_model_bytes']):.3f}")
    console.print(sizes)
    layers = Table(title="per decoder layer")
    for col in ("layer", "weight sparsity", "activation sparsity", "packed MiB", "dense MiB", "ratio"):
        layers.add_column(col, justify="right")
    for row in m["per_layer"]:
        s2 = row["activation_sparsity"]
        layers.add_row(str(row["layer"]), f"{row['weight_sparsity']:.4f}", "-" if s2 is None else f"{s2:.4f}",
                       _mib(row["bytes"]), _mib(row["dense_bytes"]), f"{row['bytes'] / max(1, row['dense_bytes']):.3f}")
    console.print(layers)
    s2 = m["activation_sparsity"]
    console.print(f"weight sparsity {m['weight_sparsity']:.4f}; activation sparsity "
                  f"{'none (no thresholds)' if s2 is None else f'{s2:g} (calibrated target)'}; "
                  f"{m['seconds']:.1f} s; written to {outcome.out}", highlight=False)
    if as_json:
        print(json_module.dumps(outcome.summary(), indent=2))
