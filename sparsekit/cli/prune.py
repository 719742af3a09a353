"""sparsekit prune."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "prune"


def command(
    sparsity: Annotated[float, typer.Option("--sparsity", help="Weight sparsity S1 in [0, 1).")],
    out: o.OutDir,
    method: Annotated[o.Method, typer.Option(help="Pruning method.")] = o.Method.wanda,
    structure: Annotated[str, typer.Option(help="unstructured, or N:M such as 2:4 or 4:8.")] = "unstructured",
    model: o.Model = "demo",
    calib_dataset: o.CalibDataset = "demo",
    nsamples: o.NSamples = 128,
    seqlen: o.SeqLen = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Glob pattern of linear names to leave dense (repeatable).")] = None,
    eval: Annotated[bool, typer.Option("--eval", help="Report perplexity before and after.")] = False,
    eval_dataset: Annotated[str, typer.Option(help="Text for --eval: wikitext2, demo, or a local file.")] = "demo",
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Prune weights with Wanda, SparseGPT or magnitude, layer by layer."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit prune is not built yet.")
