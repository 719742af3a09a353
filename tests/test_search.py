"""search end to end with the real prune + calibrate + evaluate, on a tiny random model and the demo model."""
from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from sparsekit.errors import BadInput
from sparsekit.search import run_search
from sparsekit.testing import tiny_model

# small enough for seconds per search on 2 cores
TINY = dict(nsamples=4, seqlen=32, eval_windows=3, device="cpu")
SEARCH = dict(totals=[0.5, 0.7], s1_grid="0,0.25,0.5")
ROWS = {(0.0, 0.0)} | {(0.5, s) for s in (0.0, 0.25, 0.5)} | {(0.7, s) for s in (0.0, 0.25, 0.5, 0.7)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved as a model dir, with the demo tokenizer (so the demo texts tokenize)."""
    from transformers import AutoTokenizer

    from sparsekit.models import DEMO_DIR

    d = tmp_path_factory.mktemp("tiny-model")
    tiny_model(vocab_size=4096, max_position_embeddings=64, seed=3).save_pretrained(d)
    AutoTokenizer.from_pretrained(DEMO_DIR).save_pretrained(d)
    return d


class Spy:
    """Counts calls of the real prune / calibrate / perplexity functions (without changing them)."""

    def __init__(self, monkeypatch):
        import sparsekit.activation as activation
        import sparsekit.evaluate as evaluate
        import sparsekit.pruning as pruning

        self.calls = {"prune": [], "calibrate": 0, "evaluate": 0}
        prune, calibrate, ppl = pruning.prune_model, activation.calibrate_model, evaluate.perplexity

        def spy_prune(*a, **kw):
            self.calls["prune"].append(kw["sparsity"])
            return prune(*a, **kw)

        def spy_calibrate(*a, **kw):
            self.calls["calibrate"] += 1
            return calibrate(*a, **kw)

        def spy_ppl(*a, **kw):
            self.calls["evaluate"] += 1
            return ppl(*a, **kw)

        monkeypatch.setattr(pruning, "prune_model", spy_prune)
        monkeypatch.setattr(activation, "calibrate_model", spy_calibrate)
        monkeypatch.setattr(evaluate, "perplexity", spy_ppl)


def _csv(path):
    with open(path / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full(tiny_dir, tmp_path_factory):
    """One uninterrupted single-device search on the tiny model: the reference for the other tests."""
    out = tmp_path_factory.mktemp("full") / "s"
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        outcome = run_search(model=str(tiny_dir), out=out, **SEARCH, **TINY)
    return out, outcome, spy.calls


def test_rows_follow_the_formula_and_the_files_are_written(full):
    out, outcome, _ = full
    rows = _csv(out)
    assert list(rows[0]) == ["s1", "s2", "Uniform_PPL", "total", "method", "structure", "greedy", "dataset",
                             "seqlen", "nsamples"]
    got = {(float(r["total"]), float(r["s1"])): r for r in rows}
    assert set(got) == ROWS and len(rows) == len(ROWS)  # endpoints and the dense row included
    for (total, s1), r in got.items():
        s2 = 0.0 if total == 0 else 1 - (1 - total) / (1 - s1)
        assert float(r["s2"]) == s2
        assert math.isfinite(float(r["Uniform_PPL"])) and float(r["Uniform_PPL"]) > 1
        assert (r["method"], r["structure"], r["greedy"], r["dataset"], r["seqlen"], r["nsamples"]) == \
            ("wanda", "unstructured", "False", "demo", "32", "4")
    best = json.loads((out / "best.json").read_text())
    assert [b["total"] for b in best["best"]] == [0.5, 0.7]
    for b in best["best"]:
        assert b["Uniform_PPL"] == min(float(r["Uniform_PPL"]) for (t, _), r in got.items() if t == b["total"])
    assert best["dense_ppl"] == float(got[(0.0, 0.0)]["Uniform_PPL"])
    assert (out / "ppl_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert outcome.computed == len(ROWS)


def test_no_wasted_work(full, tiny_dir, tmp_path, monkeypatch):
    out, _, calls = full
    # each s1 > 0 pruned once, each s1 calibrated once, each row evaluated once; all of it cached
    assert sorted(calls["prune"]) == [0.25, 0.5, 0.7]
    assert calls["calibrate"] == 4
    assert calls["evaluate"] == len(ROWS)
    for s1 in (0.25, 0.5, 0.7):
        assert (out / "cache" / f"s1_{s1!r}" / "model" / "sparsekit.json").is_file()
    for s1 in (0.0, 0.25, 0.5, 0.7):
        assert (out / "cache" / f"s1_{s1!r}" / "calibration" / "histograms.safetensors").is_file()

    copy = shutil.copytree(out, tmp_path / "again")
    spy = Spy(monkeypatch)
    again = run_search(model=str(tiny_dir), out=copy, **SEARCH, **TINY)
    assert again.computed == 0 and spy.calls == {"prune": [], "calibrate": 0, "evaluate": 0}
    assert (copy / "results.csv").read_bytes() == (out / "results.csv").read_bytes()

    # a new total reuses every cached s1; only s1 = 0.6 (its own endpoint) is new work
    more = run_search(model=str(tiny_dir), out=copy, totals=[0.5, 0.6, 0.7], s1_grid="0,0.25,0.5", **TINY)
    assert more.computed == 4 and spy.calls == {"prune": [0.6], "calibrate": 1, "evaluate": 4}
    assert len(_csv(copy)) == len(ROWS) + 4


def test_values_are_what_the_pipeline_gives_by_hand(full, tiny_dir):
    from sparsekit.activation import apply_thresholds, calibrate_model
    from sparsekit.data import calibration_samples, eval_tokens
    from sparsekit.evaluate import perplexity
    from sparsekit.models import load_model
    from sparsekit.pruning import prune_model

    got = {(c.total, c.s1): r.ppl for c, r in full[1].results.items()}
    model, tok = load_model(str(tiny_dir), "cpu")
    samples = calibration_samples("demo", tok, 4, 32, 0)
    tokens = eval_tokens("demo", tok)

    def ppl():
        return perplexity(model, tokens, 32, max_windows=3).ppl

    assert got[(0.0, 0.0)] == ppl()
    cal = calibrate_model(model, samples, device=torch.device("cpu"))
    with apply_thresholds(model, cal.thresholds(0.5)):
        assert got[(0.5, 0.0)] == ppl()
    prune_model(model, samples, method="wanda", sparsity=0.25, device="cpu")
    cal = calibrate_model(model, samples, device=torch.device("cpu"))
    with apply_thresholds(model, cal.thresholds(1 - (1 - 0.7) / (1 - 0.25))):
        assert got[(0.7, 0.25)] == ppl()


def test_resume_after_interrupt_gives_the_same_rows(full, tiny_dir, tmp_path, monkeypatch):
    part = tmp_path / "part"
    k = 3
    seen = []

    def stop_after_k(p):
        if p.row is not None:
            seen.append(p.row)
            if len(seen) == k:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(model=str(tiny_dir), out=part, on_progress=stop_after_k, **SEARCH, **TINY)
    assert len(_csv(part)) == k
    assert not (part / "ppl_vs_sparsity.png").exists()

    spy = Spy(monkeypatch)
    resumed = run_search(model=str(tiny_dir), out=part, **SEARCH, **TINY)
    assert resumed.computed == len(ROWS) - k
    assert spy.calls["evaluate"] == len(ROWS) - k
    assert (part / "results.csv").read_bytes() == (full[0] / "results.csv").read_bytes()
    assert json.loads((part / "best.json").read_text())["best"] == json.loads((full[0] / "best.json").read_text())["best"]


def test_two_cpu_workers_give_the_same_results_as_one(full, tiny_dir, tmp_path):
    seen = []
    out = tmp_path / "two"
    outcome = run_search(model=str(tiny_dir), out=out, devices="cpu,cpu", on_progress=seen.append, **SEARCH, **TINY)
    assert outcome.computed == len(ROWS)
    assert (out / "results.csv").read_bytes() == (full[0] / "results.csv").read_bytes()
    assert seen[-1].done == seen[-1].total == len(ROWS)
    assert sum(p.row is not None for p in seen) == len(ROWS)
    assert any(p.stage.count("cpu: ") == 2 for p in seen)  # both workers reported


def test_other_settings_are_refused_unless_forced(full, tiny_dir, tmp_path):
    out = shutil.copytree(full[0], tmp_path / "s")
    with pytest.raises(BadInput, match="other settings.*method.*--force"):
        run_search(method="magnitude", model=str(tiny_dir), out=out, **SEARCH, **TINY)
    with pytest.raises(BadInput, match=r"other settings \(model, model_signature"):
        run_search(model="demo", out=out, **SEARCH, **TINY)
    outcome = run_search(totals=[0.3], s1_grid="0", method="magnitude", model=str(tiny_dir), out=out, force=True, **TINY)
    assert outcome.computed == 3
    assert {(r["method"], r["total"]) for r in _csv(out)} == {("magnitude", "0.0"), ("magnitude", "0.3")}
    assert json.loads((out / "search.json").read_text())["settings"]["method"] == "magnitude"
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["s1_0.0", "s1_0.3"]


def test_a_search_from_before_the_calibration_protocol_is_refused(full, tiny_dir, tmp_path):
    """Its cached pruned models and calibrations used random-start windows and absolute thresholds."""
    out = shutil.copytree(full[0], tmp_path / "old")
    meta = json.loads((out / "search.json").read_text())
    del meta["settings"]["calibration_protocol"]
    (out / "search.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match=r"other settings \(calibration_protocol\).*--force"):
        run_search(model=str(tiny_dir), out=out, **SEARCH, **TINY)


@pytest.mark.parametrize("kw, words", [
    (dict(totals=[1.0]), "--total"),
    (dict(totals=[0.5], s1_grid="0,0.6"), "larger than the total budget"),
    (dict(totals=[0.5], eval_dataset="nosuch"), "unknown dataset"),
    (dict(totals=[0.5], calib_dataset="/no/such.txt"), "does not exist"),
    (dict(totals=[0.5], structure="3:2"), "--structure"),
    (dict(totals=[0.5], method="bogus"), "unknown pruning method"),
    (dict(totals=[0.5], devices="cpu,gpu9"), "--device"),
])
def test_bad_input_writes_nothing(tiny_dir, tmp_path, kw, words):
    out = tmp_path / "s"
    with pytest.raises(BadInput, match=words):
        run_search(out=out, **(dict(TINY, model=str(tiny_dir)) | kw))
    assert not out.exists()


def test_a_foreign_directory_is_refused_even_with_force(tiny_dir, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a search dir"):
        run_search(totals=[0.5], model=str(tiny_dir), out=out, force=True, **TINY)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_demo_model_search(tmp_path):
    """The demo model (real text statistics): mixing both kinds beats either alone at F = 0.5."""
    out = tmp_path / "demo"
    outcome = run_search(totals=[0.5], s1_grid="0,0.25", out=out, nsamples=4, seqlen=128, eval_windows=4, device="cpu")
    res = {(c.total, c.s1): r.ppl for c, r in outcome.results.items()}
    assert set(res) == {(0.0, 0.0), (0.5, 0.0), (0.5, 0.25), (0.5, 0.5)}
    dense = res[(0.0, 0.0)]
    assert 1 < dense < 1000
    assert res[(0.5, 0.5)] > dense  # half of the weights gone
    assert res[(0.5, 0.0)] > dense  # half of the activations gone
    assert res[(0.5, 0.25)] < min(res[(0.5, 0.0)], res[(0.5, 0.5)])  # the split beats both endpoints
    assert json.loads((out / "best.json").read_text())["best"][0]["total"] == 0.5


def _cli(*args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "from sparsekit.cli import main; main()", "search", *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.parametrize("args, words", [
    (["--total", "1.5"], "--total must be in (0, 1)"),
    (["--total", "0.5", "--s1-grid", "0,0.6"], "larger than the total budget 0.5"),
    (["--total", "0.5", "--eval-dataset", "nosuch"], "unknown dataset 'nosuch'"),
])
def test_cli_bad_input_is_one_sentence_exit_2(tmp_path, args, words):
    res = _cli(*args, "--out", str(tmp_path / "s"))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()


def test_cli_refuses_a_search_dir_with_other_settings(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"kind": "search", "settings": {"method": "sparsegpt"}}))
    res = _cli("--total", "0.5", "--out", str(out))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "other settings" in lines[0] and "--force" in lines[0]
    assert [p.name for p in out.iterdir()] == ["search.json"]


def test_cli_runs_renders_tables_and_prints_json(tiny_dir, tmp_path, capsys):
    from sparsekit.cli import main

    out = tmp_path / "s"
    main(["search", "--model", str(tiny_dir), "--total", "0.5", "--total", "0.6", "--s1-grid", "0,0.5",
          "--nsamples", "2", "--seqlen", "32", "--eval-windows", "2", "--device", "cpu", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout holds only the JSON
    assert [b["total"] for b in data["best"]] == [0.5, 0.6]
    assert len(data["rows"]) == 1 + 2 + 3 and data["computed"] == 6  # dense; 0.5: s1 0, 0.5; 0.6: s1 0, 0.5, 0.6
    assert "2 non-overlapping windows x 32 tokens" in data["protocol"]
    assert captured.err.count("<- best") == 2 and "total sparsity 0.6" in captured.err
    assert len(_csv(out)) == 6
