"""sparsekit bench."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "bench"


def command(
    model: o.Model = "demo",
    baseline: Annotated[Optional[str], typer.Option(help="dense (same harness) or hf (transformers generate).")] = None,
    input_tokens: Annotated[int, typer.Option(min=1, help="Prompt length.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=2, help="Tokens generated per repeat.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences decoded together.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed repeats first.")] = 5,
    repeat: Annotated[int, typer.Option(min=1, help="Timed repeats.")] = 15,
    attn: Annotated[str, typer.Option(help="sdpa, flash_attention_2 or eager.")] = "sdpa",
    mode: Annotated[Optional[str], typer.Option(help="graph (CUDA-graph decode; GPU default) or eager.")] = None,
    weight_sparsity: Annotated[float, typer.Option("--weight-sparsity", help="Synthetic models: weight sparsity S1.")] = 0.0,
    activation_sparsity: Annotated[float, typer.Option("--activation-sparsity", help="Synthetic models: activation sparsity S2.")] = 0.0,
    format: Annotated[str, typer.Option("--format", help="Synthetic models: weight format.")] = "dense",
    save_per_iter: Annotated[bool, typer.Option("--save-per-iter", help="Keep every repeat's timings in the JSON.")] = False,
    outdir: Annotated[Optional[Path], typer.Option(help="Write bench.json here.")] = None,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Time TTFT and TPOT of decoding, sparse against dense in one run."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit bench is not built yet.")
