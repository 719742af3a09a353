"""The Typer app: one subcommand per module in this package. No torch import at module level."""
from __future__ import annotations

from typing import Annotated

import typer

from sparsekit import __version__
from sparsekit.cli import bench, calibrate, convert, kernel_test, profile, prune, search

app = typer.Typer(
    name="sparsekit",
    help="Faster LLM decoding from weight sparsity x activation sparsity.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sparsekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Faster LLM decoding from weight sparsity x activation sparsity."""


for _module in (prune, calibrate, search, convert, bench, profile, kernel_test):
    app.command(_module.NAME, help=_module.command.__doc__)(_module.command)
