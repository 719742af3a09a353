"""Activation sparsity on the demo model (real text statistics): quality degrades gracefully with S2."""
from __future__ import annotations

import pytest
import torch

from sparsekit.activation import apply_thresholds, calibrate_model, measure_sparsity
from sparsekit.data import calibration_samples, eval_tokens
from sparsekit.evaluate import perplexity
from sparsekit.models import load_model

WINDOWS = 24  # of the 185 evaluation windows: enough for the ordering, fast on 2 cores


@pytest.fixture(scope="module")
def demo():
    model, tok = load_model("demo", device="cpu")
    samples = calibration_samples("demo", tok, 32, 512, seed=0)
    cal = calibrate_model(model, samples, device=torch.device("cpu"), greedy=True)
    return model, cal, eval_tokens("demo", tok)


def _ppl(model, tokens, thresholds, achieved=None):
    with apply_thresholds(model, thresholds, count=True) as handle:
        ppl = perplexity(model, tokens, 512, max_windows=WINDOWS).ppl
        if achieved is not None:
            achieved.update(handle.achieved())
    return ppl


@pytest.mark.slow
def test_perplexity_rises_with_s2_and_greedy_is_no_worse_than_uniform(demo):
    model, cal, tokens = demo
    ppl = {s2: _ppl(model, tokens, cal.thresholds(s2)) for s2 in (0.0, 0.25, 0.5, 0.6)}
    assert ppl[0.0] < ppl[0.25] < ppl[0.5] < ppl[0.6], ppl
    achieved: dict[str, float] = {}
    greedy = _ppl(model, tokens, cal.thresholds(0.5, greedy=True), achieved)
    assert greedy <= ppl[0.5], (greedy, ppl[0.5])
    # ... at the same fraction of weight reads skipped, per layer, on held-out text
    for layer in cal.names:
        eff = sum(achieved[layer[r]] * cal.params[r] for r in layer) / sum(cal.params.values())
        assert eff == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_default_calibration_hits_s2_within_001_at_every_site_on_the_held_out_plays():
    """The issue's criterion with the shipped defaults (64 disjoint windows of the calibration plays,
    relative thresholds at o_proj, 8192-token in-use correction), measured on every window of the
    evaluation plays (hamlet, tempest), which calibration never sees."""
    model, tok = load_model("demo", device="cpu")
    cal = calibrate_model(model, calibration_samples("demo", tok, 64, 512, seed=0), device=torch.device("cpu"))
    held_out = eval_tokens("demo", tok)
    for s2 in (0.25, 0.5, 0.6):
        achieved = measure_sparsity(model, cal.thresholds(s2), held_out, seqlen=512)
        assert len(achieved) == 7 * model.config.num_hidden_layers
        worst = max(achieved, key=lambda n: abs(achieved[n] - s2))
        assert abs(achieved[worst] - s2) <= 0.01, (s2, worst, achieved[worst])
