"""Activation sparsity on the demo model (real text statistics): quality degrades gracefully with S2."""
from __future__ import annotations

import pytest
import torch

from sparsekit.activation import apply_thresholds, calibrate_model
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
