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
    dtype: o.DTypeOpt = o.DType.auto,
    json: o.Json = False,
) -> None:
    """Pack a (pruned) model into a kernel format with its activation thresholds."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit convert is not built yet.")
