"""fuse_projections: q/k/v and gate/up as one launch each, same outputs, exact round trip."""
from __future__ import annotations

import pytest
import torch

from sparsekit.models import linear_refs
from sparsekit.runtime import linear as rl
import sparsekit.ops as sk_ops
from sparsekit.runtime.fuse import (FusedProjection, ProjectionSlice, fuse_projections, fused_groups, glu_fused,
                                    unfuse_projections)
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
    """Count calls of SparseLinear / nn.Linear forwards and of the SwiGLU-fused ops (one call = one
    launch of its kernel)."""
    calls = []
    for cls in (SparseLinear, torch.nn.Linear):
        orig = cls.forward

        def wrapped(self, x, _orig=orig):
            calls.append(self)
            return _orig(self, x)

        monkeypatch.setattr(cls, "forward", wrapped)
    for name in ("teal_matvec_glu", "spdp_matvec_glu"):
        orig = getattr(sk_ops, name)

        def wrapped_op(*args, _orig=orig, _name=name, **kwargs):
            calls.append(_name)
            return _orig(*args, **kwargs)

        monkeypatch.setattr(sk_ops, name, wrapped_op)
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
        glu = fmt in ("teal", "spdp")  # the SwiGLU product moves into the down projection's kernel
        assert glu_fused(model) == (layers if glu else 0)
        calls = _launch_counter(monkeypatch)
        got_prefill = model(prompt).logits
        prefill_calls = list(calls)
        got_step = model(step).logits
        step_calls = calls[len(prefill_calls):]
        # 7 projections per layer became 4 (qkv, o, gate/up, down), plus lm_head
        assert len(prefill_calls) == len(step_calls) == 4 * layers + 1
        # decode (one token per sequence) runs the fused op; prefill (dense activations) does not
        fused_op = f"{fmt}_matvec_glu"
        assert step_calls.count(fused_op) == (layers if glu else 0)
        assert prefill_calls.count(fused_op) == (layers if fmt == "spdp" else 0)
        monkeypatch.undo()
        torch.testing.assert_close(got_prefill, ref_prefill, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_step, ref_step, rtol=1e-5, atol=1e-5)
        assert unfuse_projections(model) == 2 * layers
        assert fused_groups(model) == 0 and glu_fused(model) == 0
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


def test_glu_fusion_can_be_turned_off(monkeypatch):
    torch.manual_seed(0)
    model = tiny_model("llama")
    _prune(model)
    convert_model(model, "teal", {r.name: 0.05 for r in linear_refs(model)})
    layers = model.config.num_hidden_layers
    monkeypatch.setenv("SPARSEKIT_FUSE_GLU", "0")
    assert fuse_projections(model) == 2 * layers and glu_fused(model) == 0
    unfuse_projections(model)
    monkeypatch.delenv("SPARSEKIT_FUSE_GLU")
    assert fuse_projections(model, glu=False) == 2 * layers and glu_fused(model) == 0
    unfuse_projections(model)
    model.model.layers[0].mlp.act_fn = torch.nn.GELU()  # not a SwiGLU MLP any more: left alone
    assert fuse_projections(model) == 2 * layers and glu_fused(model) == layers - 1


@pytest.mark.parametrize("fmt", ["teal", "spdp"])
@pytest.mark.parametrize("mode", ["absolute", "relative", "none", "shared"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 5)])
def test_forward_glu_equals_forward_of_the_product(fmt, mode, shape):
    """forward_glu(gu) == forward(silu(gate) * up) in every configuration (fused op or fallback)."""
    from sparsekit.kernels.reference import silu_mul
    from sparsekit.runtime.linear import SharedSelection

    torch.manual_seed(1)
    lin = torch.nn.Linear(40, 24, bias=True)
    with torch.no_grad():
        lin.weight.masked_fill_(torch.rand(lin.weight.shape) < 0.5, 0)
    t = None if mode == "none" else (0.6 if mode == "relative" else 0.1)
    m = SparseLinear.from_linear(lin, fmt, t, relative=(mode == "relative"),
                                 **({"tile_rows": 32} if fmt == "spdp" else {}))
    if mode == "shared":
        m.shared = SharedSelection(t, 1)
    gu = torch.randn(*shape, 80)
    expect = m(silu_mul(gu))
    got = m.forward_glu(gu)
    assert got.shape == expect.shape == (*shape, 24)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
    fused = m._glu_threshold(gu) is not None
    decode = shape[-1] == 1  # one token per sequence: the layer sparsifies
    if fmt == "teal":  # teal's prefill runs a dense matmul, which stays as it is
        assert fused == (mode == "absolute" and decode)
    else:  # spdp's plain op also serves dense activations (threshold 0) on the CPU
        assert fused == (mode in ("absolute", "none"))
