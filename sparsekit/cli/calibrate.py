"""sparsekit calibrate."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "calibrate"


def command(
    out: o.OutDir,
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    nsamples: o.NSamples = 64,
    seqlen: o.SeqLen = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Also compute the greedy per-layer allocation.")] = False,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", help="Show thresholds for activation sparsity S2.")] = None,
    eval: Annotated[bool, typer.Option("--eval", help="With --sparsity: achieved sparsity and perplexity on held-out text.")] = False,
    eval_dataset: Annotated[str, typer.Option(help="Held-out text for --eval: wikitext2, demo, or a local file.")] = "demo",
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Record activation histograms (TEAL) and derive thresholds for any activation sparsity."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit calibrate is not built yet.")
