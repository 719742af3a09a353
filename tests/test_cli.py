"""The command-line contract: help, version, errors (exit codes, one sentence, no traceback)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sparsekit.cli.app import app

SUBCOMMANDS = ["prune", "calibrate", "search", "convert", "bench", "profile", "kernel-test"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", "from sparsekit.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_help_lists_every_subcommand_and_does_not_import_torch():
    code = ("import sys; sys.argv=['sparsekit','--help']\n"
            "from sparsekit.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'help imported torch'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for name in SUBCOMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name):
    res = run_cli(name, "--help")
    assert res.returncode == 0, res.stderr
    assert "--" in res.stdout and "Usage" in res.stdout


def test_version():
    from sparsekit import __version__

    res = run_cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"sparsekit {__version__}"


def test_typer_app_has_all_commands():
    import typer

    names = set(typer.main.get_command(app).commands)
    assert names == set(SUBCOMMANDS)


@pytest.mark.parametrize(
    "args, words",
    [
        (["prune", "--model", "/no/such/dir", "--sparsity", "0.5", "--out", "x"], "does not exist"),
        (["prune", "--sparsity", "1.5", "--out", "x"], "sparsity"),
        (["prune", "--method", "bogus", "--sparsity", "0.5", "--out", "x"], "bogus"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(args, words, tmp_path):
    res = run_cli(*args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert words in lines[0]


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sparsekit", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "kernel-test" in r.stdout
