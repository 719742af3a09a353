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
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit profile is not built yet.")
