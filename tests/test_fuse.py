"""fuse_projections: q/k/v and gate/up as one launch each, same outputs, exact round trip."""
from __future__ import annotations

import pytest
import torch

from sparsekit.models import linear_refs
from sparsekit.runtime import linear as rl
from sparsekit.runtime.fuse import FusedProjection, ProjectionSlice, fuse_projections, fused_groups, unfuse_projections
from sparsekit.runtime.linear import SparseLinear
from sparsekit.runtime.patch import bytes_per_token, convert_model
from sparsekit.testing import tiny_model


def _prune(model, s=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ref in linear_refs(model):
            w = ref.module.weight
            w.masked_fill_(torch.rand(w.shape, generator=g) < s, 0)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _launch_counter(monkeypatch):
    """Count calls of SparseLinear / nn.Linear forwards (one call = one launch of its kernel)."""
    calls = []
    for cls in (SparseLinear, torch.nn.Linear):
        orig = cls.forward

        def wrapped(self, x, _orig=orig):
            calls.append(self)
            return _orig(self, x)

        monkeypatch.setattr(cls, "forward", wrapped)
    return calls


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("fmt", ["none", "dense", "teal", "spdp", "spinfer"])
def test_fused_model_computes_the_same(model_type, fmt, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model(model_type)
    if fmt != "none":
        _prune(model)
        convert_model(model, fmt, {r.name: 0.05 for r in linear_refs(model)})
    before = _state(model)
    nbytes = bytes_per_token(model, 0.5)
    prompt = torch.randint(0, model.config.vocab_size, (2, 7))
    step = torch.randint(0, model.config.vocab_size, (2, 1))
    with torch.no_grad():
        ref_prefill, ref_step = model(prompt).logits, model(step).logits
        layers = model.config.num_hidden_layers
        assert fuse_projections(model) == 2 * layers
        assert fused_groups(model) == 2 * layers
        if fmt in ("none", "dense", "teal"):  # the same bytes, read in fewer launches
            assert bytes_per_token(model, 0.5) == nbytes
        else:  # re-encoded: fewer metadata sentinels and less tile padding, never more bytes
            assert 0.95 * nbytes <= bytes_per_token(model, 0.5) <= nbytes
        q = model.model.layers[0].self_attn.q_proj
        assert isinstance(q, ProjectionSlice) and isinstance(q.group, FusedProjection)
        calls = _launch_counter(monkeypatch)
        got_prefill, got_step = model(prompt).logits, model(step).logits
        per_forward = len(calls) // 2
        # 7 projections per layer became 4 (qkv, o, gate/up, down), plus lm_head
        assert per_forward == 4 * layers + 1
        monkeypatch.undo()
        torch.testing.assert_close(got_prefill, ref_prefill, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_step, ref_step, rtol=1e-5, atol=1e-5)
        assert unfuse_projections(model) == 2 * layers
        assert fused_groups(model) == 0
    after = _state(model)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    with torch.no_grad():
        torch.testing.assert_close(model(step).logits, ref_step, rtol=0, atol=0)


def test_different_thresholds_do_not_fuse():
    torch.manual_seed(0)
    model = tiny_model("llama")
    th = {r.name: 0.05 for r in linear_refs(model)}
    th["model.layers.0.self_attn.k_proj"] = 0.07  # greedy allocations give q/k/v their own thresholds
    convert_model(model, "teal", th)
    layers = model.config.num_hidden_layers
    assert fuse_projections(model) == 2 * layers - 1
    assert isinstance(model.model.layers[0].self_attn.k_proj, SparseLinear)
    assert isinstance(model.model.layers[0].mlp.up_proj, ProjectionSlice)


def test_fused_decode_is_sparsified_with_the_site_threshold():
    """The stacked teal layer keeps the site threshold: a decode step masks |x| <= t."""
    rl.set_prefill_sparsity(False)
    torch.manual_seed(0)
    model = tiny_model("llama")
    convert_model(model, "teal", {r.name: 10.0 for r in linear_refs(model)})  # everything masked
    fuse_projections(model)
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 1, model.config.hidden_size)
    with torch.no_grad():
        assert torch.count_nonzero(attn.q_proj(x)) == 0
        assert torch.count_nonzero(attn.k_proj(x)) == 0
        # prefill (several tokens) stays dense by default
        assert torch.count_nonzero(attn.v_proj(torch.randn(1, 3, model.config.hidden_size))) > 0
