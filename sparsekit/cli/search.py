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
    s1_grid: Annotated[Optional[str], typer.Option("--s1-grid", help="Comma-separated weight sparsities to try.")] = None,
    method: Annotated[o.Method, typer.Option(help="Pruning method.")] = o.Method.wanda,
    structure: Annotated[str, typer.Option(help="unstructured (N:M fixes s1, so it is not searched).")] = "unstructured",
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy per-layer activation allocation instead of uniform.")] = False,
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    eval_dataset: Annotated[str, typer.Option(help="wikitext2, demo, or a local file.")] = "demo",
    nsamples: o.NSamples = 32,
    seqlen: o.SeqLen = None,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated devices, one worker each (cuda:0,cuda:1).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a search dir made with other settings.")] = False,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Find the best split of a total sparsity budget between weights and activations."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit search is not built yet.")
