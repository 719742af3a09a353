"""search: the grid, the s2 formula, the rows, and the result files (no model involved)."""
from __future__ import annotations

import csv
import json

import pytest

from sparsekit.errors import BadInput
from sparsekit.search import plan as P
from sparsekit.search import results as R


def test_default_grid_is_tenths():
    assert P.DEFAULT_GRID == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@pytest.mark.parametrize("totals", [[0.5], [0.5, 0.7], [0.55], [0.05, 0.95]])
def test_rows_follow_the_formula_with_endpoints_and_one_dense_row(totals):
    rows = P.configs_for(totals, None)
    assert rows[0] == P.DENSE and rows[0].s1 == 0 and rows[0].s2 == 0
    assert sum(r.dense for r in rows) == 1
    for total in totals:
        mine = [r for r in rows if r.total == total]
        s1s = [r.s1 for r in mine]
        assert s1s == sorted({0.0, total, *(g for g in P.DEFAULT_GRID if g <= total)})
        for r in mine:
            assert r.s2 == 1 - (1 - total) / (1 - r.s1)  # exactly the formula
            assert 0 <= r.s2 < 1
            # and the pair really spends the budget: 1 - (1 - s1)(1 - s2) = F
            assert 1 - (1 - r.s1) * (1 - r.s2) == pytest.approx(total, abs=1e-12)
        first, last = mine[0], mine[-1]
        assert first.s1 == 0 and first.s2 == 1 - (1 - total)  # activations only
        assert last.s1 == total and last.s2 == 0.0  # weights only
    assert rows == sorted(rows)  # one canonical order: by s1, then total


def test_user_grid_is_clipped_per_total_and_gets_the_endpoints():
    g = P.grids([0.5, 0.7], P.parse_grid("0.3, 0.6,0.3"))
    assert g == {0.5: [0.0, 0.3, 0.5], 0.7: [0.0, 0.3, 0.6, 0.7]}


@pytest.mark.parametrize("text, words", [("0,abc", "not a number"), ("0,1.2", "[0, 1)"), (",", "empty"),
                                         ("-0.1", "[0, 1)")])
def test_bad_grid_text(text, words):
    with pytest.raises(BadInput, match=words.replace("[", r"\[").replace(")", r"\)")):
        P.parse_grid(text)


def test_grid_value_above_the_budget_is_bad_input():
    with pytest.raises(BadInput, match="larger than the total budget 0.5"):
        P.grids([0.5], P.parse_grid("0,0.6"))
    with pytest.raises(BadInput, match="larger than the total budget 0.7"):
        P.grids([0.5, 0.7], P.parse_grid("0.8"))


@pytest.mark.parametrize("totals", [[0.0], [1.0], [1.5], [-0.2], [0.5, 1.0], []])
def test_totals_outside_the_open_interval_are_bad_input(totals):
    with pytest.raises(BadInput):
        P.check_totals(totals)


def test_nm_structure_fixes_s1():
    assert P.grids([0.4, 0.5, 0.7], None, (2, 4)) == {0.4: [0.0], 0.5: [0.0, 0.5], 0.7: [0.0, 0.5]}
    with pytest.raises(BadInput, match="fixes the weight sparsity"):
        P.grids([0.5], [0.0, 0.5], (2, 4))


def _settings(**kw) -> P.Settings:
    base = dict(model="demo", model_signature={"model_type": "llama"}, method="wanda", structure="unstructured",
                greedy=False, calib_dataset="demo", eval_dataset="demo", nsamples=8, seqlen=64, eval_windows=2,
                seed=0, dtype="float32")
    return P.Settings(**(base | kw))


def test_settings_differences_name_the_changed_fields():
    st = _settings()
    assert st.differences(st.as_dict()) == []
    assert st.differences(_settings(method="sparsegpt", seqlen=32).as_dict()) == ["method", "seqlen"]


def _results(pairs):
    return {P.Config(s1, t): R.Result(P.Config(s1, t), ppl) for (s1, t), ppl in pairs.items()}


def test_results_csv_layout_roundtrip_and_best(tmp_path):
    st = _settings()
    found = _results({(0.0, 0.0): 10.0, (0.0, 0.5): 14.0, (0.3, 0.5): 12.5, (0.5, 0.5): 13.0,
                      (0.0, 0.7): 30.0, (0.3, 0.7): 25.0, (0.7, 0.7): 21.0})
    R.write_results(tmp_path, found, st)
    with open(tmp_path / R.RESULTS, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["s1", "s2", "Uniform_PPL", "total", "method", "structure", "greedy", "dataset", "seqlen", "nsamples"]
    assert [(float(r[0]), float(r[3])) for r in rows[1:]] == sorted((c.s1, c.total) for c in found)
    assert rows[1][4:] == ["wanda", "unstructured", "False", "demo", "64", "8"]
    back = R.read_results(tmp_path)
    assert back == found
    for c in back:  # s2 written exactly as the formula gives it
        assert float(next(r[1] for r in rows[1:] if float(r[0]) == c.s1 and float(r[3]) == c.total)) == c.s2
    best = R.best_per_total(found)
    assert {t: (b.config.s1, b.kind) for t, b in best.items()} == {0.5: (0.3, "mixed"), 0.7: (0.7, "weights only")}
    R.write_best(tmp_path, found, st)
    saved = json.loads((tmp_path / R.BEST).read_text())
    assert saved["dense_ppl"] == 10.0
    assert [(b["total"], b["s1"], b["Uniform_PPL"]) for b in saved["best"]] == [(0.5, 0.3, 12.5), (0.7, 0.7, 21.0)]
    assert saved["settings"] == st.as_dict()


def test_a_torn_csv_line_is_ignored_on_resume(tmp_path):
    st = _settings()
    R.write_results(tmp_path, _results({(0.0, 0.0): 10.0, (0.0, 0.5): 14.0}), st)
    with open(tmp_path / R.RESULTS, "a") as f:
        f.write("0.3,0.28")  # a line cut short
    assert set(R.read_results(tmp_path)) == {P.Config(0.0, 0.0), P.Config(0.0, 0.5)}


def test_plot_is_written(tmp_path):
    found = _results({(0.0, 0.0): 10.0, (0.0, 0.5): 14.0, (0.3, 0.5): 12.5, (0.5, 0.5): 13.0})
    path = R.plot(tmp_path, found, _settings())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
