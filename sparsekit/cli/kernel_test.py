"""sparsekit kernel-test."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "kernel-test"


def command(
    device: o.Device = "auto",
    shapes: Annotated[str, typer.Option(help="tiny, llama2-7b, llama3-8b or all.")] = "tiny",
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float16, bfloat16, float32 [default: all the device supports].")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Only this backend: reference, cpu, triton or cuda.")] = None,
    bench: Annotated[bool, typer.Option("--bench", help="Also time each op against the dense baseline.")] = False,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Check every kernel against the reference (and time it with --bench)."""
    from sparsekit.errors import NotBuilt

    raise NotBuilt("sparsekit kernel-test is not built yet.")
