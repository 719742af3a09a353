"""The owned decode loop (sparsekit.runtime.generate): same tokens as transformers, fixed buffers."""
from __future__ import annotations

import pytest
import torch

from sparsekit.runtime.generate import DecodeSession, RunTiming, greedy_generate
from sparsekit.testing import tiny_model


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_owned_loop_matches_transformers_generate(family, attn):
    model = tiny_model(family, seed=1)
    model.set_attn_implementation(attn)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    ours = greedy_generate(model, ids, 12)
    assert ours.shape == (2, 12)
    assert torch.equal(ours, _hf_greedy(model, ids, 12))


def test_session_reuses_buffers_and_repeats_exactly():
    model = tiny_model("llama", seed=2)
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=1, prompt_len=5, max_new_tokens=6)
        sess.set_prompt(ids)
        first = sess.run(per_step=True)
        tokens = sess.tokens()
        cache_ptr = sess.cache.layers[0].keys.data_ptr()
        token_ptr = sess.token.data_ptr()
        second = sess.run(per_step=True)
        assert torch.equal(tokens, sess.tokens())
        assert sess.cache.layers[0].keys.data_ptr() == cache_ptr and sess.token.data_ptr() == token_ptr
        assert len(first.step_ms) == 5 and len(second.step_ms) == 5
        assert all(ms > 0 for ms in first.step_ms)
        assert second.latency_ms >= second.ttft_ms > 0
        with pytest.raises(RuntimeError, match="full"):
            sess.step()
    assert torch.equal(tokens, _hf_greedy(model, ids, 6))


def test_prompt_shape_is_checked_and_graph_mode_needs_cuda():
    model = tiny_model("llama")
    sess = DecodeSession(model, batch_size=2, prompt_len=4, max_new_tokens=3)
    with pytest.raises(ValueError, match="shape"):
        sess.set_prompt(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="CUDA"):
        DecodeSession(model, batch_size=1, prompt_len=4, max_new_tokens=3, mode="graph")


def test_tpot_is_latency_minus_ttft_over_remaining_tokens():
    r = RunTiming(ttft_ms=10.0, latency_ms=40.0, new_tokens=4)
    assert r.tpot_ms == pytest.approx(10.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt, dtype", [("dense", torch.float16), ("dense", torch.float32), ("teal", torch.float16),
                                        ("spdp", torch.bfloat16), ("spinfer", torch.float16)])
def test_graph_replay_gives_the_eager_tokens(fmt, dtype):
    from sparsekit import synthetic
    from sparsekit.runtime.patch import convert_model

    model = tiny_model("llama", seed=4, dtype=dtype).cuda()
    if fmt != "dense":
        s2 = 0.0 if fmt == "spinfer" else 0.5
        convert_model(model, fmt, synthetic.calibrate_thresholds(model, s2, tokens=16) if s2 else None)
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(1)).cuda()
    eager = greedy_generate(model, ids, 10, mode="eager")
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=3, prompt_len=7, max_new_tokens=10, mode="graph")
        assert sess.decode_graph is not None and sess.prefill_graph is not None, sess.notes
        sess.set_prompt(ids)
        for _ in range(2):
            timing = sess.run(per_step=True)
            assert torch.equal(sess.tokens(), eager)
        assert len(timing.step_ms) == 9

HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal", "aten::is_nonzero"}


@pytest.mark.parametrize("fmt", ["dense", "teal", "spdp"])
def test_steps_never_read_device_values_so_they_can_be_captured(fmt):
    """A CUDA graph cannot hold a host sync: no op in prefill or decode may read a tensor's value
    on the host (checked on the CPU by watching every dispatched op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sparsekit import synthetic
    from sparsekit.runtime.patch import convert_model

    class Spy(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    with Spy() as spy:
        torch.ones(2).sum().item()
    assert "aten::_local_scalar_dense" in spy.ops  # the spy does see a host read

    model = tiny_model("llama", seed=1)
    if fmt != "dense":
        convert_model(model, fmt, synthetic.calibrate_thresholds(model, 0.5, tokens=16))
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=2, prompt_len=4, max_new_tokens=4)
        sess.set_prompt(torch.randint(0, 128, (2, 4)))
        sess.reset()
        with Spy() as prefill:
            sess.prefill()
        with Spy() as step:
            sess.step()
    assert not prefill.ops & HOST_READS and not step.ops & HOST_READS, (prefill.ops & HOST_READS, step.ops & HOST_READS)
    if fmt != "dense":
        assert any(op.startswith("sparsekit::") for op in step.ops)


@pytest.mark.parametrize("fmt", ["dense", "teal", "spdp"])
def test_compiled_fused_decode_gives_the_eager_tokens(fmt):
    """torch.compile traces the decode step through the custom ops and the fused projections
    (aot_eager here: dynamo + the fake kernels + functionalization, without inductor's codegen)."""
    import torch._dynamo

    from sparsekit import synthetic
    from sparsekit.runtime.fuse import fuse_projections
    from sparsekit.runtime.patch import convert_model

    model = tiny_model("llama", seed=5)
    if fmt != "dense":
        convert_model(model, fmt, synthetic.calibrate_thresholds(model, 0.5, tokens=16))
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    eager = greedy_generate(model, ids, 8)
    fuse_projections(model)
    from sparsekit.runtime.fuse import glu_fused

    # teal/spdp: the MLP's forward is patched (SwiGLU inside down): dynamo traces it too
    assert glu_fused(model) == (model.config.num_hidden_layers if fmt != "dense" else 0)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=2, prompt_len=6, max_new_tokens=8, compile=True,
                             compile_backend="aot_eager")
        assert sess.compiled and sess.prefill_compiled, sess.notes
        sess.set_prompt(ids)
        for _ in range(2):
            sess.run()
            assert torch.equal(sess.tokens(), eager)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # two graphs (the prefill and the decode step), no recompiles over 2 prefills and 14 steps
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt, dtype", [("dense", torch.float16), ("teal", torch.float16), ("teal", torch.bfloat16),
                                        ("spdp", torch.float16)])
def test_compiled_graph_replay_gives_the_eager_tokens(fmt, dtype):
    import torch._dynamo

    from sparsekit import synthetic
    from sparsekit.runtime.fuse import fuse_projections
    from sparsekit.runtime.patch import convert_model

    model = tiny_model("llama", seed=4, dtype=dtype).cuda()
    if fmt != "dense":
        convert_model(model, fmt, synthetic.calibrate_thresholds(model, 0.5, tokens=16))
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(1)).cuda()
    eager = greedy_generate(model, ids, 10, mode="eager")
    fuse_projections(model)
    torch._dynamo.reset()
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=3, prompt_len=7, max_new_tokens=10, mode="graph", compile=True)
        assert sess.compiled and sess.decode_graph is not None, sess.notes
        sess.set_prompt(ids)
        sess.run()
        replayed = sess.tokens()
        sess.reset()
        sess.prefill()
        for _ in range(9):
            sess.step(eager=True)  # the compiled step, launched without the graph
        assert torch.equal(sess.tokens(), replayed)
        assert sess.prefill_compiled, sess.notes
        logits = []
        for prefill, forward in ((sess._prefill_forward_eager, sess._decode_forward_eager),
                                 (sess._prefill_forward, sess._decode_forward)):
            sess.reset()
            first = prefill().float()
            sess._emit(first)
            logits.append((first, forward().float()))
        # inductor fuses RMSNorm/rotary/SiLU and rounds their intermediates differently: a few
        # half-precision ulps at logit scale (bf16: 2^-8 relative)
        tol = 2e-2 if dtype == torch.float16 else 6e-2
        for eager_logits, compiled_logits in zip(logits[0], logits[1]):
            torch.testing.assert_close(compiled_logits, eager_logits, rtol=tol, atol=tol)
        assert torch.equal(replayed[:, 0], eager[:, 0])  # the compiled prefill picks the eager first token
    torch._dynamo.reset()


def test_a_failing_compile_falls_back_to_the_uncompiled_step(monkeypatch):
    """No C compiler, an op inductor cannot lower...: the step runs uncompiled and says why."""
    model = tiny_model("llama", seed=6)
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(4))
    eager = greedy_generate(model, ids, 6)

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("inductor: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with torch.inference_mode():
        sess = DecodeSession(model, batch_size=1, prompt_len=5, max_new_tokens=6, compile=True)
        assert not sess.compiled
        assert any("uncompiled" in n and "no working C++ compiler" in n for n in sess.notes), sess.notes
        sess.set_prompt(ids)
        sess.run()
        assert torch.equal(sess.tokens(), eager)


def test_inductor_options_from_env(monkeypatch):
    from sparsekit.runtime.generate import inductor_options

    monkeypatch.setenv("SPARSEKIT_INDUCTOR", "combo_kernels=1, coordinate_descent_tuning=0")
    assert inductor_options() == {"combo_kernels": True, "coordinate_descent_tuning": False}
    monkeypatch.setenv("SPARSEKIT_INDUCTOR", "")
    assert inductor_options() == {}
    monkeypatch.setenv("SPARSEKIT_INDUCTOR", "combo_kernels=yes")
    with pytest.raises(ValueError, match="combo_kernels='yes' is not a bool"):
        inductor_options()
