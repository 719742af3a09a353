"""Shell completions are generated from the app and checked in; stale files fail here."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sparsekit.cli import completions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", sorted(completions.FILES))
def test_checked_in_completions_are_current(shell):
    path = ROOT / "completions" / completions.FILES[shell]
    assert path.exists(), f"{path} missing: run python -m sparsekit.cli.completions"
    assert path.read_text() == completions.GENERATORS[shell](), (
        f"{path.name} is stale: run python -m sparsekit.cli.completions")


def test_completions_name_every_subcommand_and_option():
    text = completions.bash()
    for name in ("prune", "calibrate", "search", "convert", "bench", "profile", "kernel-test"):
        assert name in text
    for opt in ("--sparsity", "--method", "--total", "--format", "--max-new-tokens", "--shapes"):
        assert opt in text
    assert "wanda sparsegpt magnitude" in text


def test_bash_completion_script_is_valid_and_completes():
    path = ROOT / "completions" / "sparsekit.bash"
    script = f"""source {path}
COMP_WORDS=(sparsekit prune --met); COMP_CWORD=2; _sparsekit; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(sparsekit prune --method ''); COMP_CWORD=3; _sparsekit; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(sparsekit ca); COMP_CWORD=1; _sparsekit; echo "${{COMPREPLY[@]}}"
"""
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "--method"
    assert lines[1].split() == ["wanda", "sparsegpt", "magnitude"]
    assert lines[2] == "calibrate"


def test_zsh_and_fish_scripts_parse():
    # .ci/run installs zsh and fish
    assert shutil.which("zsh") and shutil.which("fish"), "zsh and fish are needed (apt-get install zsh fish)"
    assert subprocess.run(["zsh", "-n", str(ROOT / "completions" / "_sparsekit")]).returncode == 0
    assert subprocess.run(["fish", "-n", str(ROOT / "completions" / "sparsekit.fish")]).returncode == 0


def test_fish_completes_subcommands_and_choices():
    path = ROOT / "completions" / "sparsekit.fish"
    res = subprocess.run(["fish", "-c", f"source {path}; complete -C 'sparsekit ca'; complete -C 'sparsekit prune --method '"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    words = [line.split("\t")[0] for line in res.stdout.splitlines()]
    assert "calibrate" in words
    assert {"wanda", "sparsegpt", "magnitude"} <= set(words)
