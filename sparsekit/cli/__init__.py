"""The ``sparsekit`` command. ``main`` is the console-script entry point."""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    import click
    import typer

    from sparsekit.cli import app as app_module
    from sparsekit.errors import SparsekitError

    command = typer.main.get_command(app_module.app)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SPARSEKIT_DEBUG") == "1"
    try:
        result = command.main(args=args, prog_name="sparsekit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _say("aborted.")
        sys.exit(130)
    except click.ClickException as exc:  # bad option, missing argument, wrong type
        _say(exc.format_message().rstrip(".") + ". Try 'sparsekit --help'.")
        sys.exit(2)
    except SparsekitError as exc:
        if debug:
            raise
        _say(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("interrupted; finished results are on disk, run the same command again to resume.")
        sys.exit(130)
    except Exception as exc:  # a bug or an environment problem: one line, the details on --debug
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _say(f"{type(exc).__name__}: {first} (run with --debug for the traceback).")
        sys.exit(1)
    if isinstance(result, int) and result:
        sys.exit(result)


def _say(message: str) -> None:
    sys.stderr.write(f"sparsekit: error: {message}\n")
