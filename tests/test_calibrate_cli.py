"""``sparsekit calibrate`` end to end on tiny model dirs (with the demo tokenizer) and small texts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "sparsekit" / "demo"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-c", "from sparsekit.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def _model_dir(path: Path, **overrides) -> Path:
    from sparsekit.testing import tiny_model

    tiny_model(vocab_size=4096, **overrides).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, path / name)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not (DEMO / "tokenizer.json").exists():
        pytest.fail("the demo tokenizer (sparsekit/demo/tokenizer.json) is missing")
    root = tmp_path_factory.mktemp("calcli")
    (root / "calib.txt").write_text((DEMO / "calib.txt").read_text()[:30_000])
    (root / "eval.txt").write_text((DEMO / "eval.txt").read_text()[:8_000])
    model = _model_dir(root / "model")
    other = _model_dir(root / "other", num_hidden_layers=3)
    out = root / "cal"
    res = run_cli("calibrate", "--model", str(model), "--calib-dataset", str(root / "calib.txt"), "--nsamples", "8",
                  "--seqlen", "64", "--greedy", "--sparsity", "0.5", "--sparsity", "0.25", "--eval",
                  "--eval-dataset", str(root / "eval.txt"), "--device", "cpu", "--out", str(out), "--json")
    return {"root": root, "model": model, "other": other, "out": out, "first": res}


def test_calibrate_eval_json(work):
    res = work["first"]
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["out"] == str(work["out"]) and data["greedy"] is True and data["prefill"] == "all"
    rows = [(r["mode"], r["s2"]) for r in data["eval"]]
    assert rows == [("dense", 0.0), ("uniform", 0.25), ("uniform", 0.5), ("greedy", 0.25), ("greedy", 0.5)]
    ppl = {(r["mode"], r["s2"]): r["perplexity"]["ppl"] for r in data["eval"]}
    assert all(p > 1 for p in ppl.values())
    for r in data["eval"][1:]:
        assert len(r["achieved"]) == 14 and abs(r["worst_deviation"]) < 0.1
    assert set(data["thresholds"]["greedy"]["0.5"]) == set(data["thresholds"]["uniform"]["0.5"])
    names = sorted(p.name for p in work["out"].iterdir())
    assert names == ["calibration.json", "histograms.safetensors", "sparsekit.json"]


def test_reuse_calibration_prints_site_table_and_prefill(work):
    res = run_cli("calibrate", "--model", str(work["model"]), "--calibration", str(work["out"]), "--sparsity", "0.4",
                  "--eval", "--eval-dataset", str(work["root"] / "eval.txt"), "--prefill", "later-half",
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "uniform thresholds at S2 = 0.4" in out
    assert "positions >= seqlen/2 of each window sparsified" in out and "decode tokens" in out
    assert "read from" in out and "perplexity" in out


def test_calibrate_a_pruned_model_dir(work, tmp_path):
    from sparsekit.pruning.run import run_prune

    pruned = tmp_path / "pruned"
    run_prune(out=pruned, model=str(work["model"]), method="magnitude", sparsity=0.5, device="cpu")
    out = tmp_path / "cal"
    res = run_cli("calibrate", "--model", str(pruned), "--calib-dataset", str(work["root"] / "calib.txt"),
                  "--nsamples", "4", "--seqlen", "64", "--device", "cpu", "--out", str(out), "--sparsity", "0.5")
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "calibration.json").read_text())["info"]
    assert info["model"] == str(pruned) and info["model_manifest"]["kind"] == "prune"


def _corrupt(work, tmp_path, how: str) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(work["out"], bad)
    hist = bad / "histograms.safetensors"
    if how == "truncate":
        hist.write_bytes(hist.read_bytes()[:1000])
    else:
        hist.unlink()
    return bad


@pytest.mark.parametrize("case, words", [
    ("s2_high", "must be in [0, 1)"),
    ("s2_negative", "must be in [0, 1)"),
    ("eval_without_s2", "--eval needs"),
    ("no_out", "exactly one of --out"),
    ("other_model", "different model"),
    ("truncated", "sha256"),
    ("missing", "is missing"),
])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(work, tmp_path, case, words):
    model, out, new = str(work["model"]), str(work["out"]), tmp_path / "new"
    args = {
        "s2_high": ["--model", model, "--sparsity", "1.0", "--out", str(new)],
        "s2_negative": ["--model", model, "--calibration", out, "--sparsity", "-0.2"],
        "eval_without_s2": ["--model", model, "--out", str(new), "--eval"],
        "no_out": ["--model", model, "--sparsity", "0.5"],
        "other_model": ["--model", str(work["other"]), "--calibration", out, "--sparsity", "0.5"],
        "truncated": ["--model", model, "--calibration", "TRUNC", "--sparsity", "0.5"],
        "missing": ["--model", model, "--calibration", "MISSING", "--sparsity", "0.5"],
    }[case]
    if "TRUNC" in args:
        args[args.index("TRUNC")] = str(_corrupt(work, tmp_path, "truncate"))
    if "MISSING" in args:
        args[args.index("MISSING")] = str(_corrupt(work, tmp_path, "unlink"))
    res = run_cli("calibrate", "--device", "cpu", *args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert words in lines[0]
    assert not new.exists()
