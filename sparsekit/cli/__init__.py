"""The ``sparsekit`` command. ``main`` is the console-script entry point."""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    import typer

    from sparsekit.cli import app as app_module
    from sparsekit.errors import SparsekitError

    exits, aborts, usage_errors = _click_exceptions()

    command = typer.main.get_command(app_module.app)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SPARSEKIT_DEBUG") == "1"
    if not debug:  # our own progress bars and tables say what is happening; keep library chatter out
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        result = command.main(args=args, prog_name="sparsekit", standalone_mode=False)
    except exits as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except aborts:
        _say("aborted.")
        sys.exit(130)
    except usage_errors as exc:  # bad option, missing argument, wrong type
        message = " ".join(exc.format_message().split()).rstrip(".").replace("Value error, ", "")
        ctx = getattr(exc, "ctx", None)
        where = "sparsekit" if ctx is None or ctx.info_name == "sparsekit" else f"sparsekit {ctx.info_name}"
        _say(f"{message}. Try '{where} --help'.")
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


def _click_exceptions():
    """(Exit, Abort, ClickException) classes of click and of typer's own copy of click, if any."""
    import importlib

    exits, aborts, usage = [], [], []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        for attr, bucket in (("Exit", exits), ("Abort", aborts)):
            if hasattr(mod, attr):
                bucket.append(getattr(mod, attr))
    import typer

    exits += [typer.Exit]
    aborts += [typer.Abort]
    return tuple(set(exits)), tuple(set(aborts)), tuple(set(usage))


def _say(message: str) -> None:
    sys.stderr.write(f"sparsekit: error: {message}\n")
