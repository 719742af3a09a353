"""Calibration on tiny random models: histograms, in-use thresholds, greedy tables, files, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from sparsekit.activation import Calibration, calibrate_model, measure_sparsity
from sparsekit.activation.greedy import GreedySettings, effective
from sparsekit.activation.probe import LayerProbe
from sparsekit.activation.thresholds import HIST_FILE, META_FILE, SITE_NAMES, relative_sites
from sparsekit.errors import BadInput
from sparsekit.models import ROLES, decoder_layers, layer_linears, linear_refs
from sparsekit.testing import tiny_model

CPU = torch.device("cpu")
SETTINGS = GreedySettings(steps=24, tokens=512)


def _tokens(seed: int, n: int, seqlen: int = 64) -> torch.Tensor:
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def cal(model):
    return calibrate_model(model, _tokens(1, 48), device=CPU, greedy=True, settings=SETTINGS,
                           correction_tokens=48 * 64)


@pytest.fixture(scope="module")
def cal_abs(model):
    """TEAL's rule at every site (|x| > t), no greedy tables."""
    return calibrate_model(model, _tokens(1, 48), device=CPU, correction_tokens=48 * 64, rule="absolute")


def test_the_default_rule_is_relative_at_o_only(cal, cal_abs):
    assert cal.rule == "relative" and cal_abs.rule == "absolute"
    th = cal.thresholds(0.5)
    assert th.relative == {layer["o"] for layer in cal.names}
    assert th.relative == cal.thresholds(0.5, greedy=True).relative
    assert cal_abs.thresholds(0.5).relative == frozenset()
    # the other sites record the same statistic under both rules
    for site in ("attn", "mlp", "down"):
        k = SITE_NAMES.index(site)
        assert torch.equal(cal.counts[:, k], cal_abs.counts[:, k])


def test_histograms_cover_every_input_entry(model, cal):
    n_tokens = 48 * 64
    widths = {"attn": 64, "o": 64, "mlp": 64, "down": 160}
    assert cal.counts.shape[:2] == (2, 4)
    for k, site in enumerate(SITE_NAMES):
        total = cal.counts[:, k].sum(-1) + cal.stats[:, k, :3].sum(-1)
        assert torch.equal(total, torch.full((2,), float(n_tokens * widths[site]), dtype=total.dtype))
    names = [r.name for r in linear_refs(model)]
    assert sorted(cal.thresholds(0.5)) == sorted(names)


@pytest.mark.parametrize("rule", ["relative", "absolute"])
@pytest.mark.parametrize("s2", [0.25, 0.5, 0.7])
def test_achieved_sparsity_on_held_out_tokens_is_within_001_at_every_site(model, cal, cal_abs, s2, rule):
    thresholds = (cal if rule == "relative" else cal_abs).thresholds(s2)
    achieved = measure_sparsity(model, thresholds, _tokens(99, 64), seqlen=64)  # never seen in calibration
    worst = max(achieved, key=lambda n: abs(achieved[n] - s2))
    assert abs(achieved[worst] - s2) <= 0.01, (worst, achieved[worst])


def test_in_use_correction_lowers_o_and_down_thresholds(model, cal_abs):
    cal = cal_abs
    corrected, teal = cal.thresholds(0.6), cal.thresholds(0.6, corrected=False)
    for layer in cal.names:
        assert corrected[layer["o"]] < teal[layer["o"]]
        assert corrected[layer["down"]] < teal[layer["down"]]
        assert corrected[layer["q"]] == corrected[layer["k"]] == corrected[layer["v"]]
    achieved = measure_sparsity(model, teal, _tokens(99, 64), seqlen=64)
    assert achieved[cal.names[0]["down"]] > 0.6 + 0.01  # TEAL's dense quantiles over-sparsify down


def test_thresholds_zero_at_zero_and_dense_quantiles_grow_with_s2(cal):
    assert set(cal.thresholds(0.0).values()) == {0.0}
    assert set(cal.thresholds(0.0, greedy=True).values()) == {0.0}
    prev = cal.thresholds(0.0, corrected=False)
    for s2 in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        cur = cal.thresholds(s2, corrected=False)
        assert all(cur[n] > prev[n] for n in cur), s2
        prev = cur
    # layer 0's attention input has nothing sparsified upstream: corrected == dense quantile
    q0 = cal.names[0]["q"]
    assert cal.thresholds(0.5)[q0] == pytest.approx(cal.thresholds(0.5, corrected=False)[q0], rel=1e-12)


def test_greedy_tables_and_thresholds(model, cal):
    assert cal.greedy is not None and len(cal.greedy) == 2
    for table in cal.greedy:
        assert float(table[0, 0]) == 0.0 and float(table[-1, 0]) >= 0.9 - 1e-9
    th = cal.thresholds(0.5, greedy=True)
    expected = cal.expected(0.5, greedy=True)
    params = cal.params
    for layer in cal.names:
        assert effective({r: expected[layer[r]] for r in ROLES}, params) == pytest.approx(0.5, abs=1e-9)
    # greedy spreads sparsity unevenly: not every projection of a layer gets the same threshold quantile
    quantiles = cal.sparsities(0.5, greedy=True)
    assert len({round(quantiles[n], 6) for n in cal.names[0].values()}) > 2
    assert set(th) == set(cal.thresholds(0.5))


def test_greedy_is_no_worse_than_uniform_on_the_layer_objective(model, cal):
    """At the same achieved effective sparsity, the greedy allocation's layer error <= uniform's."""
    from sparsekit.pruning.sequential import capture_inputs

    x, kwargs = capture_inputs(model, _tokens(1, 48)[:8], CPU)  # the first layer's calibration inputs
    layer = decoder_layers(model)[0]
    lin = layer_linears(layer)
    probe = LayerProbe(layer, lin, x, kwargs, relative_sites(cal.rule))
    try:
        names = cal.names[0]
        uni = cal.thresholds(0.5)
        gre = cal.thresholds(0.5, greedy=True)
        err_u, ach_u, _ = probe.error({r: uni[names[r]] for r in ROLES}, None)
        err_g, ach_g, _ = probe.error({r: gre[names[r]] for r in ROLES}, None)
    finally:
        probe.close()
    assert effective(ach_u, cal.params) == pytest.approx(0.5, abs=0.02)
    assert effective(ach_g, cal.params) == pytest.approx(0.5, abs=0.02)
    assert err_g <= err_u


def test_partial_layer_evaluation_matches_whole_layer(model):
    """A step of one projection from the current state: recomputing only what it changes == a whole forward."""
    from sparsekit.pruning.sequential import capture_inputs

    x, kwargs = capture_inputs(model, _tokens(3, 4), CPU)
    layer = decoder_layers(model)[0]
    probe = LayerProbe(layer, layer_linears(layer), x, kwargs)
    try:
        assert probe.partial
        base = {r: 0.0 for r in ROLES}
        for role in ("o", "gate", "up", "down"):
            step = dict(base, **{role: 0.3})
            fast, slow = probe.error(step, role), probe.error(step, None)
            assert fast[0] > 0
            assert fast[0] == pytest.approx(slow[0], rel=1e-5)
            assert fast[1][role] == pytest.approx(slow[1][role])
        # take a step of q, then a step of down on top of it: still equal to the whole forward
        err, ach, token = probe.error(dict(base, q=0.4), "q")
        probe.accept(token)
        both = dict(base, q=0.4, down=0.5)
        assert probe.error(both, "down")[0] == pytest.approx(probe.error(both, None)[0], rel=1e-5)
    finally:
        probe.close()


def test_save_load_roundtrip(tmp_path, model, cal):
    out = cal.save(tmp_path / "cal")
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([HIST_FILE, META_FILE, "sparsekit.json"])
    per_site = (out / HIST_FILE).stat().st_size / (2 * 4)
    assert per_site < 300_000
    back = Calibration.load(out, model)
    assert back.rule == "relative"
    for s2 in (0.3, 0.6):
        assert back.thresholds(s2) == cal.thresholds(s2)
        assert back.thresholds(s2).relative == cal.thresholds(s2).relative
        assert back.thresholds(s2, greedy=True) == cal.thresholds(s2, greedy=True)
    assert json.loads((out / "sparsekit.json").read_text())["kind"] == "calibrate"


@pytest.mark.parametrize("s2", [1.0, -0.1, 1.5])
def test_s2_outside_range_is_bad_input(cal, s2):
    with pytest.raises(BadInput, match=r"\[0, 1\)"):
        cal.thresholds(s2)


def test_loading_for_a_different_model_is_bad_input(tmp_path, cal):
    out = cal.save(tmp_path / "cal")
    with pytest.raises(BadInput, match="different model"):
        Calibration.load(out, tiny_model(num_hidden_layers=3))
    with pytest.raises(BadInput, match="different model"):
        Calibration.load(out, tiny_model(intermediate_size=96))


def test_missing_or_corrupt_histogram_file_is_bad_input(tmp_path, cal):
    out = cal.save(tmp_path / "cal")
    data = (out / HIST_FILE).read_bytes()
    (out / HIST_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="sha256"):
        Calibration.load(out)
    (out / HIST_FILE).unlink()
    with pytest.raises(BadInput, match="missing"):
        Calibration.load(out)
    with pytest.raises(BadInput, match="does not exist"):
        Calibration.load(tmp_path / "nowhere")


def _rewrite_meta(out, edit) -> None:
    """Edit calibration.json and re-sign the manifest, as an older or a foreign writer would have."""
    from sparsekit.formats.checkpoint import MANIFEST, sha256_file

    meta = json.loads((out / META_FILE).read_text())
    edit(meta)
    (out / META_FILE).write_text(json.dumps(meta))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["sha256"][META_FILE] = sha256_file(out / META_FILE)
    (out / MANIFEST).write_text(json.dumps(manifest))


def test_a_version_1_calibration_reads_as_absolute(tmp_path, model, cal_abs):
    out = cal_abs.save(tmp_path / "cal")

    def to_v1(meta):
        del meta["rule"]
        meta["version"] = 1

    _rewrite_meta(out, to_v1)
    back = Calibration.load(out, model)
    assert back.rule == "absolute" and back.thresholds(0.5).relative == frozenset()
    assert back.thresholds(0.5) == cal_abs.thresholds(0.5)


def test_an_unknown_rule_or_version_is_bad_input(tmp_path, cal_abs):
    out = cal_abs.save(tmp_path / "cal")
    _rewrite_meta(out, lambda meta: meta.update(rule="sideways"))
    with pytest.raises(BadInput, match="incompatible sparsekit version"):
        Calibration.load(out)
    _rewrite_meta(out, lambda meta: meta.update(rule="absolute", version=99))
    with pytest.raises(BadInput, match="incompatible sparsekit version"):
        Calibration.load(out)


def test_uniform_only_calibration_refuses_greedy(model):
    plain = calibrate_model(model, _tokens(1, 4), device=CPU, correction_tokens=128)
    assert plain.greedy is None
    with pytest.raises(BadInput, match="--greedy"):
        plain.thresholds(0.5, greedy=True)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_every_supported_family_calibrates_with_partial_greedy_evaluation(model_type):
    from sparsekit.pruning.sequential import capture_inputs

    m = tiny_model(model_type)
    samples = _tokens(5, 8)
    x, kwargs = capture_inputs(m, samples[:2], CPU)
    layer = decoder_layers(m)[0]
    probe = LayerProbe(layer, layer_linears(layer), x, kwargs)
    assert probe.partial
    probe.close()
    c = calibrate_model(m, samples, device=CPU, greedy=True, settings=SETTINGS)
    achieved = measure_sparsity(m, c.thresholds(0.5, greedy=True), samples, seqlen=64)
    for layer_names in c.names:
        eff = sum(achieved[layer_names[r]] * c.params[r] for r in ROLES) / sum(c.params.values())
        assert eff == pytest.approx(0.5, abs=0.03)  # in-sample: the greedy table's effective sparsity holds
