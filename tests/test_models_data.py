"""models.py (architecture adapter), data.py (samples), evaluate.py (perplexity), checkpoint I/O."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sparsekit import data, evaluate, models
from sparsekit.errors import BadInput
from sparsekit.formats import checkpoint
from sparsekit.pruning.sequential import capture_inputs, run_layerwise
from sparsekit.testing import tiny_config, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_linears_by_role(family):
    model = tiny_model(family)
    refs = models.linear_refs(model)
    n_layers = model.config.num_hidden_layers
    assert len(refs) == 7 * n_layers
    assert {r.role for r in refs} == set(models.ROLES)
    for r in refs:
        assert r.module is model.get_submodule(r.name)
        assert isinstance(r.module, torch.nn.Linear)
    kv = model.config.num_key_value_heads * (model.config.hidden_size // model.config.num_attention_heads)
    k_proj = [r for r in refs if r.role == "k"][0].module
    assert k_proj.out_features == kv  # grouped-query attention
    names = {r.name for r in refs}
    assert "lm_head" not in names and not any("embed" in n for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tiny_model_loads_from_dir(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    loaded_config = models.load_config(str(tmp_path))
    assert loaded_config.model_type == family


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(BadInput, match="not supported"):
        models.load_config(str(tmp_path))


def test_missing_model_dir_is_bad_input():
    with pytest.raises(BadInput, match="does not exist"):
        models.resolve_model_path("/no/such/dir")
    with pytest.raises(BadInput, match="does not exist"):
        models.resolve_model_path("./nope")


def test_device_and_dtype_resolution():
    assert models.resolve_device("cpu").type == "cpu"
    with pytest.raises(BadInput):
        models.resolve_device("tpu")
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_default_seqlen_respects_model_max():
    cfg = tiny_config("llama")
    assert models.default_seqlen(cfg) == 128
    with pytest.raises(BadInput):
        models.default_seqlen(cfg, 4096)


class _CharTokenizer:
    """Byte-level stand-in tokenizer: enough for data.py's contract."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=True, verbose=True):
        class Out:
            pass

        out = Out()
        out.input_ids = torch.tensor([[b % 128 for b in text.encode()]])
        return out


def test_calibration_samples_are_seeded_and_fixed_length(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("To be, or not to be, that is the question. " * 50)
    tok = _CharTokenizer()
    a = data.calibration_samples(str(f), tok, nsamples=5, seqlen=32, seed=1)
    b = data.calibration_samples(str(f), tok, nsamples=5, seqlen=32, seed=1)
    c = data.calibration_samples(str(f), tok, nsamples=5, seqlen=32, seed=2)
    assert a.shape == (5, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


class _PositionTokenizer:
    """Token i is i: a sample's values say where in the text it came from."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=True, verbose=True):
        class Out:
            pass

        out = Out()
        out.input_ids = torch.arange(len(text)).unsqueeze(0)
        return out


@pytest.mark.parametrize("nsamples", [1, 7, 11])
def test_calibration_samples_are_disjoint_windows_of_the_text(tmp_path, nsamples):
    f = tmp_path / "t.txt"
    f.write_text("x" * 365)  # 11 windows of 32 tokens, 13 left over for the random offset
    for seed in range(4):
        s = data.calibration_samples(str(f), _PositionTokenizer(), nsamples=nsamples, seqlen=32, seed=seed)
        assert s.shape == (nsamples, 32)
        assert torch.equal(s - s[:, :1], torch.arange(32).expand(nsamples, 32))  # contiguous text
        assert s.flatten().unique().numel() == s.numel()  # no token twice
        assert len({int(v) % 32 for v in s[:, 0]}) == 1  # one grid of back-to-back windows
    # asking for more windows than the text holds: all of them, then random starts
    s = data.calibration_samples(str(f), _PositionTokenizer(), nsamples=14, seqlen=32, seed=0)
    assert s[:11].flatten().unique().numel() == 11 * 32 and s.shape == (14, 32) and int(s.max()) < 365


def test_jsonl_source_and_bad_sources(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "hello"}\n{"text": "world"}\n')
    assert data.load_text(str(f), "calibration") == "hello\n\nworld"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(BadInput, match="line 1"):
        data.load_text(str(bad), "calibration")
    with pytest.raises(BadInput, match="unknown dataset"):
        data.check_source("imagenet")
    with pytest.raises(BadInput, match="does not exist"):
        data.check_source(str(tmp_path / "missing.txt"))
    short = tmp_path / "s.txt"
    short.write_text("abc")
    with pytest.raises(BadInput, match="fewer than"):
        data.calibration_samples(str(short), _CharTokenizer(), 1, 32)


def test_perplexity_matches_manual_computation():
    model = tiny_model("llama")
    tokens = torch.randint(0, 128, (1, 100))
    res = evaluate.perplexity(model, tokens, seqlen=32, dataset="rand")
    assert res.windows == 3 and res.tokens == 3 * 31
    total = 0.0
    with torch.no_grad():
        for w in range(3):
            x = tokens[:, w * 32 : (w + 1) * 32]
            logp = torch.log_softmax(model(x).logits.float(), -1)[0, :-1]
            total -= logp.gather(1, x[0, 1:, None]).sum().item()
    assert math.isclose(res.ppl, math.exp(total / 93), rel_tol=1e-5)
    assert "3 non-overlapping windows x 32 tokens" in res.protocol
    # a uniform random model is near vocab-size perplexity, not 1 or inf
    assert 20 < res.ppl < 1000


def test_layerwise_engine_reproduces_model_and_keeps_layers_home():
    model = tiny_model("qwen2")
    samples = torch.randint(0, 128, (3, 16))
    seen = []

    def visit(i, layer, forward):
        assert next(layer.parameters()).device.type == "cpu"
        forward()
        seen.append(i)
        return False

    run_layerwise(model, samples, torch.device("cpu"), visit)
    assert seen == [0, 1]
    captured = {}
    model.model.norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    with torch.no_grad():
        model(samples)
        h, kwargs = capture_inputs(model, samples, torch.device("cpu"))
        for layer in model.model.layers:
            out = layer(h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(h, captured["x"], atol=1e-6)


def test_atomic_dir_and_manifest_verification(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_dir(out) as tmp:
            (tmp / "a.safetensors").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with checkpoint.atomic_dir(out) as tmp:
        (tmp / "a.safetensors").write_bytes(b"abc")
        checkpoint.write_json_atomic(tmp / checkpoint.MANIFEST, {"kind": "prune", "sha256": checkpoint.tensor_hashes(tmp)})
    assert checkpoint.verify(out)["kind"] == "prune"
    checkpoint.check_out_dir(out, "prune")  # an earlier output of the same kind may be replaced
    with pytest.raises(BadInput, match="not an earlier"):
        checkpoint.check_out_dir(out, "calibrate")
    (out / "a.safetensors").write_bytes(b"abd")
    with pytest.raises(BadInput, match="sha256"):
        checkpoint.verify(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(BadInput):
        checkpoint.check_out_dir(other, "prune")
    assert json.loads((out / checkpoint.MANIFEST).read_text())["kind"] == "prune"


def test_tokenizing_a_long_text_does_not_warn(capfd):
    """A corpus is one long stream cut into windows later: no "longer than the model" warning."""
    from transformers.utils import logging as hf_logging

    _, tok = models.load_model("demo", device="cpu")
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        capfd.readouterr()
        ids = data.tokenize("to be or not to be " * 2000, tok)
        err = capfd.readouterr().err
    finally:
        hf_logging.set_verbosity(before)
    assert ids.numel() > tok.model_max_length
    assert "longer than the specified maximum" not in err
