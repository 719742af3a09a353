"""Options shared by every subcommand (DESIGN.md section 5). Importing this must stay torch-free."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class DType(str, Enum):
    auto = "auto"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Method(str, Enum):
    wanda = "wanda"
    sparsegpt = "sparsegpt"
    magnitude = "magnitude"


Model = Annotated[str, typer.Option("--model", "-m", help="HF hub id, local model dir, or 'demo' (the embedded model).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Compute dtype; auto = float16/bfloat16 on GPU, float32 on CPU.")]
Seed = Annotated[int, typer.Option(help="Random seed (calibration samples, synthetic weights).")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable results on stdout.")]
CalibDataset = Annotated[str, typer.Option(help="c4, wikitext2, demo, or a local .txt/.jsonl file.")]
NSamples = Annotated[int, typer.Option(min=1, help="Number of calibration sequences.")]
SeqLen = Annotated[Optional[int], typer.Option(min=8, help="Tokens per calibration sequence (default: min(2048, model max)).")]
OutDir = Annotated[Path, typer.Option("--out", help="Output directory (created; must be empty or an earlier sparsekit output).")]
