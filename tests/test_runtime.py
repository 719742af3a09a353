"""SparseLinear and convert_model: every format computes what the pruned dense layer computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit.ops as ops
from sparsekit.activation.sparsify import Thresholds
from sparsekit.kernels.reference import mask_relative
from sparsekit.models import linear_refs
from sparsekit.runtime import linear as rl
from sparsekit.runtime.linear import FORMATS, SparseLinear
from sparsekit.runtime.patch import bytes_per_token, convert_model, sparse_linears
from sparsekit.testing import tiny_model

cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def prune_(weight: torch.Tensor, fmt: str, sparsity: float = 0.5, seed: int = 0) -> None:
    """Zero weights in place: 2:4 for the 2:4 format, else random unstructured."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if fmt == "2:4":
            grp = weight.view(weight.shape[0], -1, 4)
            drop = grp.abs().argsort(-1)[..., :2]
            grp.scatter_(-1, drop.to(grp.device), 0)
        else:
            weight.masked_fill_((torch.rand(weight.shape, generator=g) < sparsity).to(weight.device), 0)


def masked(x, t):
    return torch.where(x.abs() > t, x, torch.zeros((), dtype=x.dtype, device=x.device))


def tols(dtype):
    return {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}[dtype]


@pytest.fixture(autouse=True)
def _prefill_off():
    rl.set_prefill_sparsity(False)
    yield
    rl.set_prefill_sparsity(False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_linear_matches_masked_dense(fmt, bias):
    torch.manual_seed(0)
    lin = nn.Linear(64, 72, bias=bias)
    prune_(lin.weight, fmt)
    t = 0.4
    sl = SparseLinear.from_linear(lin, fmt, t)
    assert torch.equal(sl.dense_weight(), lin.weight)
    decode = torch.randn(3, 1, 64)
    prefill = torch.randn(2, 5, 64)
    with torch.no_grad():
        # a decode step (1 token per sequence) is sparsified
        torch.testing.assert_close(sl(decode), F.linear(masked(decode, t), lin.weight, lin.bias))
        # prefill is dense by default ...
        torch.testing.assert_close(sl(prefill), F.linear(prefill, lin.weight, lin.bias))
        # ... and sparsified when asked for
        rl.set_prefill_sparsity(True)
        torch.testing.assert_close(sl(prefill), F.linear(masked(prefill, t), lin.weight, lin.bias))
        # without a threshold nothing is masked
        plain = SparseLinear.from_linear(lin, fmt, None)
        torch.testing.assert_close(plain(decode), F.linear(decode, lin.weight, lin.bias))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_linear_half_precision(fmt, dtype):
    torch.manual_seed(1)
    lin = nn.Linear(128, 64, bias=False).to(dtype)
    prune_(lin.weight, fmt)
    sl = SparseLinear.from_linear(lin, fmt, 0.3)
    x = torch.randn(1, 1, 128, dtype=dtype)
    ref = (masked(x, 0.3).float() @ lin.weight.float().T).to(dtype)
    with torch.no_grad():
        y = sl(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, ref, atol=tols(dtype)[0] * 10, rtol=tols(dtype)[1] * 10)


def test_weight_bytes_and_bytes_read():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=False)
    prune_(lin.weight, "spdp", 0.75)
    dense_bytes = 64 * 96 * 4
    teal = SparseLinear.from_linear(lin, "teal", 0.1)
    assert teal.weight_bytes() == dense_bytes
    assert teal.bytes_read(0.5) == dense_bytes // 2
    spdp = SparseLinear.from_linear(lin, "spdp", None)
    packed = spdp.packed()
    assert packed["shape"] == (96, 64, 64)  # the default 64-row tiles, as plain ints: no device read, traceable by torch.compile
    stored = [getattr(spdp, k) for k in spdp.keys]
    assert spdp.weight_bytes() == sum(v.numel() * v.element_size() for v in stored)
    assert spdp.bytes_read(0.5) == spdp.weight_bytes()  # no threshold: every column is read
    assert spdp.weight_sparsity() == int((lin.weight == 0).sum()) / lin.weight.numel()


def _reference_with_thresholds(model, thresholds):
    handles = []
    relative = getattr(thresholds, "relative", ())
    for ref in linear_refs(model):
        t = thresholds[ref.name]

        def hook(_m, args, t=t, rel=ref.name in relative):
            x = args[0]
            if x.shape[-2] == 1 or rl.prefill_sparsity():
                return (mask_relative(x, t) if rel else masked(x, t),)
        handles.append(ref.module.register_forward_pre_hook(hook))
    return handles


def _thresholds(model, value=0.5, rule="absolute"):
    """Thresholds growing with depth; ``relative``: the o/down ones under the relative rule."""
    refs = linear_refs(model)
    relative = {r.name for r in refs if r.role in ("o", "down")} if rule == "relative" else ()
    return Thresholds({ref.name: value * (1 + 0.1 * ref.layer) for ref in refs}, relative)


@pytest.mark.parametrize("rule", ["absolute", "relative"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_model_logits_equal_masked_pruned_dense(fmt, rule):
    model = tiny_model("llama", seed=0)
    for ref in linear_refs(model):
        prune_(ref.module.weight, fmt, seed=ref.layer)
    dense = tiny_model("llama", seed=0)
    dense.load_state_dict(model.state_dict())
    thresholds = _thresholds(model, rule=rule)
    report = convert_model(model, fmt, thresholds)
    assert {n for n, row in report["per_linear"].items() if row["relative"]} == set(thresholds.relative)
    assert len(sparse_linears(model)) == len(linear_refs(dense)) == report["per_linear"].__len__()
    assert 0.49 < report["weight_sparsity"] < 0.51
    handles = _reference_with_thresholds(dense, thresholds)
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        # prefill (dense by default) then one decode step through the KV cache
        a = model(ids, use_cache=True)
        b = dense(ids, use_cache=True)
        torch.testing.assert_close(a.logits, b.logits)
        nxt = a.logits[:, -1:].argmax(-1)
        a2 = model(nxt, past_key_values=a.past_key_values, use_cache=True).logits
        b2 = dense(nxt, past_key_values=b.past_key_values, use_cache=True).logits
        torch.testing.assert_close(a2, b2)
        rl.set_prefill_sparsity(True)
        torch.testing.assert_close(model(ids).logits, dense(ids).logits)
        assert not torch.allclose(model(ids).logits, b.logits)  # the thresholds do mask something
    for h in handles:
        h.remove()


def test_shared_selection_runs_select_once_per_site(monkeypatch):
    model = tiny_model("qwen2", seed=0)  # q/k/v carry biases
    for ref in linear_refs(model):
        prune_(ref.module.weight, "teal")
    convert_model(model, "teal", {ref.name: 0.3 for ref in linear_refs(model)})
    calls = []
    real = ops.select

    def counting(x, threshold, **kw):
        calls.append(tuple(x.shape))
        return real(x, threshold, **kw)

    monkeypatch.setattr(ops, "select", counting)
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 1)))
    layers = model.config.num_hidden_layers
    # q/k/v share one selection and gate/up another; o and down use teal_matvec directly
    assert len(calls) == 2 * layers
    q = model.model.layers[0].self_attn.q_proj
    assert q.shared is model.model.layers[0].self_attn.v_proj.shared is not None
    assert q.shared._x is None  # released after the last member used it


def test_different_thresholds_do_not_share():
    model = tiny_model("llama", seed=0)
    th = {ref.name: 0.3 for ref in linear_refs(model)}
    th["model.layers.0.self_attn.k_proj"] = 0.4
    convert_model(model, "teal", th)
    assert model.model.layers[0].self_attn.q_proj.shared is None
    assert model.model.layers[1].self_attn.q_proj.shared is not None


def test_convert_model_ignore_and_bytes_per_token():
    model = tiny_model("llama", seed=0)
    th = {ref.name: 0.3 for ref in linear_refs(model)}
    report = convert_model(model, "teal", th, ignore=["*.down_proj"])
    assert report["ignored"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    full = bytes_per_token(model, 0.0)
    half = bytes_per_token(model, 0.5)
    assert full - half == report["bytes"] // 2
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    params = sum(p.numel() * 4 for p in model.parameters())
    packed = sum(m.weight_bytes() for m in sparse_linears(model).values())
    # everything is read once, except the embedding table (one row per token)
    assert full == params + packed - vocab * hidden * 4 + hidden * 4 + _other_buffers(model)
    by_site = bytes_per_token(model, {"attn": 0.5, "mlp": 0.5, "o": 0.5, "down": 0.5})
    assert by_site == half


def _other_buffers(model):
    packed = {id(b) for m in sparse_linears(model).values() for b in m.buffers(recurse=False)}
    return sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in packed)


def test_convert_twice_is_refused():
    model = tiny_model("llama", seed=0)
    convert_model(model, "dense", None)
    assert all(not isinstance(m, nn.Linear) or "lm_head" in n for n, m in model.named_modules() if "layers" in n or n == "lm_head")
    with pytest.raises(ValueError, match="already a SparseLinear"):
        convert_model(model, "dense", None)


@cuda
@needs_cuda
@pytest.mark.parametrize("rule", ["absolute", "relative"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_logits_equal_masked_pruned_dense(fmt, rule):
    dtype = torch.float16
    model = tiny_model("llama", seed=0, dtype=dtype, hidden_size=128, intermediate_size=256).cuda()
    for ref in linear_refs(model):
        prune_(ref.module.weight, fmt, seed=ref.layer)
    dense = tiny_model("llama", seed=0, dtype=dtype, hidden_size=128, intermediate_size=256).cuda()
    dense.load_state_dict(model.state_dict())
    thresholds = _thresholds(model, 0.3, rule)
    convert_model(model, fmt, thresholds)
    handles = _reference_with_thresholds(dense, thresholds)
    ids = torch.randint(0, 128, (2, 8), device="cuda")
    with torch.no_grad():
        a = model(ids, use_cache=True)
        b = dense(ids, use_cache=True)
        torch.testing.assert_close(a.logits, b.logits, atol=2e-2, rtol=2e-2)
        nxt = b.logits[:, -1:].argmax(-1)
        a2 = model(nxt, past_key_values=a.past_key_values, use_cache=True).logits
        b2 = dense(nxt, past_key_values=b.past_key_values, use_cache=True).logits
        torch.testing.assert_close(a2, b2, atol=2e-2, rtol=2e-2)
    for h in handles:
        h.remove()
    if fmt == "2:4":  # torch's semi-structured kernel ran (no fallback to the dense weight)
        w = model.model.layers[0].self_attn.q_proj._dense_cache[1]
        assert type(w) is not torch.Tensor, type(w)


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_spdp_many_tokens_run_on_tensor_cores_or_decode_once(dtype, monkeypatch):
    """A prefill and a large decode batch run the tensor-core spdp kernel (no dense weight is made);
    above SPDP_MM_MAX_TOKENS tokens, or with K % 8 != 0, the layer decodes once and runs one matmul."""
    torch.manual_seed(0)
    tol = dict(zip(("rtol", "atol"), tols(dtype)))
    calls = []
    orig = ops.spdp_decode
    monkeypatch.setattr(ops, "spdp_decode", lambda p, **kw: calls.append(1) or orig(p, **kw))
    lin = nn.Linear(200, 136, bias=True).cuda().to(dtype)
    prune_(lin.weight, "spdp")
    sl = SparseLinear.from_linear(lin, "spdp", 0.3, tile_rows=64)
    x = torch.randn(2, rl.SPDP_DECODE_MIN_TOKENS, 200, device="cuda", dtype=dtype)
    with torch.no_grad():
        y = sl(x)  # prefill: dense activations
        assert calls == [] and torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
        torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), **tol)
        sl(x[:1, :1])  # a decode step of one sequence stays on the one-token kernel
        assert torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 0
        big = x[:1, :1].expand(rl.SPDP_DECODE_MIN_TOKENS, 1, 200).contiguous()  # a large decode batch
        torch.testing.assert_close(sl(big), F.linear(masked(big, 0.3), lin.weight, lin.bias), **tol)
        assert calls == [] and torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1) == 1
        monkeypatch.setattr(rl, "SPDP_MM_MAX_TOKENS", rl.SPDP_DECODE_MIN_TOKENS)
        torch.testing.assert_close(sl(x), y, **tol)  # 16 tokens > the (lowered) limit: decode once
        assert calls == [1]
    odd = nn.Linear(203, 40, bias=False).cuda().to(dtype)
    prune_(odd.weight, "spdp")
    sl = SparseLinear.from_linear(odd, "spdp", 0.3, tile_rows=32)
    x = torch.randn(rl.SPDP_DECODE_MIN_TOKENS, 203, device="cuda", dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(sl(x), F.linear(x, odd.weight), **tol)
    assert calls == [1, 1]  # K % 8 != 0: no tensor-core kernel


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_spdp_glu_decode_batch_leaves_the_fused_kernel_for_tensor_cores(dtype):
    """A down projection's forward_glu: from SPDP_MM_MIN_TOKENS sequences the SwiGLU product is made
    first and the tensor-core kernel runs; below, the fused one-token kernel. Same result either way."""
    from sparsekit.kernels.reference import silu_mul

    torch.manual_seed(3)
    tol = dict(zip(("rtol", "atol"), tols(dtype)))
    lin = nn.Linear(192, 136, bias=False).cuda().to(dtype)
    prune_(lin.weight, "spdp")
    sl = SparseLinear.from_linear(lin, "spdp", 0.2, tile_rows=64)
    for batch in (rl.SPDP_MM_MIN_TOKENS - 1, rl.SPDP_MM_MIN_TOKENS, rl.SPDP_DECODE_MIN_TOKENS - 1):
        gu = torch.randn(batch, 1, 384, device="cuda", dtype=dtype)
        with torch.no_grad():
            got = sl.forward_glu(gu)
            ran_mm = torch.ops.sparsekit_cuda.tune("last_spdp_mm", -1)
            expect = F.linear(masked(silu_mul(gu), 0.2), lin.weight)
        assert (sl._glu_threshold(gu) is None) == (batch >= rl.SPDP_MM_MIN_TOKENS)
        assert ran_mm == (1 if batch >= rl.SPDP_MM_MIN_TOKENS else 0), batch
        torch.testing.assert_close(got, expect, **tol)


@cuda
@needs_cuda
def test_cuda_teal_large_decode_batch_matches_masked_dense():
    torch.manual_seed(0)
    lin = nn.Linear(200, 136, bias=False).cuda().half()
    sl = SparseLinear.from_linear(lin, "teal", 0.5)
    for batch in (1, rl.TEAL_KERNEL_MAX_TOKENS, rl.TEAL_KERNEL_MAX_TOKENS + 1, 16):
        x = torch.randn(batch, 1, 200, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            torch.testing.assert_close(sl(x), F.linear(masked(x, 0.5), lin.weight), rtol=2e-3, atol=2e-3)


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_spinfer_one_token_runs_the_rowdelta_copy(dtype, monkeypatch):
    """A spinfer layer on the GPU builds its rowdelta copy; one token runs rowdelta_matvec, more tokens
    the spinfer kernel; a dtype move rebuilds the copy; the switch turns it off."""
    import sparsekit.ops as sk_ops

    torch.manual_seed(5)
    tol = dict(zip(("rtol", "atol"), tols(dtype)))
    lin = nn.Linear(300, 136, bias=True).cuda().to(dtype)
    prune_(lin.weight, "spinfer")
    sl = SparseLinear.from_linear(lin, "spinfer")
    assert sl._rowdelta is not None and sl._rowdelta["values"].is_cuda
    calls = []
    real = sk_ops.rowdelta_matvec
    monkeypatch.setattr(sk_ops, "rowdelta_matvec", lambda *a, **k: calls.append(1) or real(*a, **k))
    for shape in ((1, 1, 300), (1, 300), (2, 1, 300), (1, 5, 300)):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(sl(x), F.linear(x, lin.weight, lin.bias), **tol)
    assert calls == [1, 1]
    assert sl.bytes_read() < sl.dense_bytes()
    with torch.no_grad():  # buffers refilled in place, then finalize: the copy follows them
        sl.values.mul_(2)
        sl.finalize()
        x = torch.randn(1, 300, device="cuda", dtype=dtype)
        torch.testing.assert_close(sl(x), F.linear(x, 2 * lin.weight, lin.bias), **tol)
        sl.values.div_(2)
        sl.finalize()
    sl.float()
    assert sl._rowdelta["values"].dtype == torch.float32
    monkeypatch.setattr(rl, "SPINFER_ROWDELTA", False)
    sl.to(dtype)
    assert sl._rowdelta is None
    x = torch.randn(1, 300, device="cuda", dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(sl(x), F.linear(x, lin.weight, lin.bias), **tol)
    assert calls == [1, 1, 1]  # the switch off: the spinfer kernel
