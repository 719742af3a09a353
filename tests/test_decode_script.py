"""benchmarks/decode.py hands its settings to one child process per dtype: every setting the child reads must
reach it (the seventeenth session lost --no-autotune that way, and a GPU call measured the wrong thing)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# settings the child does not take on its command line: the parent's own, or sent through the environment
PARENT_ONLY = {"dtypes", "budget_s", "inductor", "no_glu", "child", "deadline", "skip"}


@pytest.fixture(scope="module")
def decode():
    spec = importlib.util.spec_from_file_location("decode_script", ROOT / "benchmarks" / "decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", [
    [],
    ["--model", "synthetic:tiny", "--batches", "1,4", "--formats", "teal,spdp24", "--input-tokens", "8",
     "--max-new-tokens", "5", "--warmup", "0", "--repeat", "3", "--hf", "--device", "cpu", "--no-compile",
     "--no-autotune", "--eager-prefill", "--no-fuse", "--threshold-rule", "absolute", "--tile-rows", "128",
     "--tune", "pdl=1", "--tune-variants", "l2pf=64;split=2", "--sdpa", "math"],
])
def test_every_child_setting_reaches_the_child(decode, argv, tmp_path):
    parent = decode._args(argv + ["--out", str(tmp_path)])
    cmd = decode.child_command(parent, "float16", 123.0, "float16/dense/1", tmp_path)
    child = decode._args(cmd[2:])
    assert child.child == "float16" and child.deadline == 123.0 and child.skip == "float16/dense/1"
    for name, value in vars(parent).items():
        if name not in PARENT_ONLY:
            assert getattr(child, name) == value, name
    assert set(vars(parent)) - PARENT_ONLY - {"out"}, "the parser has child settings"
