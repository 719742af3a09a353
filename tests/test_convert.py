"""sparsekit convert: converted dirs load through from_pretrained / sparsekit.load with SparseLinear
layers, give the pruned dense model's logits, and refuse tampered or incomplete files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import sparsekit
from sparsekit.errors import BadInput
from sparsekit.formats.checkpoint import MANIFEST
from sparsekit.formats.convert import run_convert, write_tensors
from sparsekit.models import DEMO_DIR, linear_refs
from sparsekit.runtime import linear as rl
from sparsekit.runtime.linear import FORMATS, SparseLinear
from sparsekit.runtime.patch import sparse_linears
from sparsekit.testing import tiny_model

from test_runtime import _reference_with_thresholds, masked, prune_  # noqa: F401


@pytest.fixture(autouse=True)
def _prefill_off():
    rl.set_prefill_sparsity(False)
    yield
    rl.set_prefill_sparsity(False)


def _pruned_dir(tmp_path: Path, fmt: str, model_type: str = "llama", dtype=torch.float32, name="src") -> Path:
    model = tiny_model(model_type, seed=0, dtype=dtype)
    for ref in linear_refs(model):
        prune_(ref.module.weight, fmt, seed=ref.layer)
    d = tmp_path / name
    model.save_pretrained(d)
    return d


def _thresholds(model_dir: Path, value=0.4) -> dict:
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    return {f"model.layers.{i}.{path}": value for i in range(n) for path in
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def _dense_reference(src: Path, thresholds: dict, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval()
    _reference_with_thresholds(dense, thresholds)
    return dense


def _check_logits(model, dense, vocab: int, atol=1e-5, rtol=1e-5):
    ids = torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids, use_cache=True), dense(ids, use_cache=True)
        torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=rtol)
        nxt = b.logits[:, -1:].argmax(-1)
        for _ in range(3):  # decode steps through the KV cache: activation sparsity is on
            a = model(nxt, past_key_values=a.past_key_values, use_cache=True)
            b = dense(nxt, past_key_values=b.past_key_values, use_cache=True)
            torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=rtol)
            nxt = b.logits[:, -1:].argmax(-1)
        rl.set_prefill_sparsity(True)
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=atol, rtol=rtol)
        rl.set_prefill_sparsity(False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_then_from_pretrained_equals_pruned_dense(tmp_path, fmt):
    from transformers import AutoModelForCausalLM

    src = _pruned_dir(tmp_path, fmt)
    th = _thresholds(src)
    outcome = run_convert(tmp_path / "out", str(src), fmt, thresholds=th)
    out = outcome.out
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "sparsekit" and qc["format"] == fmt and qc["thresholds"] is True
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "convert" and manifest["format"] == fmt
    assert set(manifest["sha256"]) == {"model.safetensors", "config.json"}
    assert 0.49 < manifest["weight_sparsity"] < 0.51
    assert len(manifest["per_layer"]) == 2 and len(manifest["per_linear"]) == 14
    if fmt not in ("dense", "teal"):
        assert manifest["sizes"]["linears_bytes"] < 0.7 * manifest["sizes"]["linears_dense_bytes"]

    model = AutoModelForCausalLM.from_pretrained(out)
    q = model.model.layers[1].self_attn.q_proj
    assert isinstance(q, SparseLinear) and q.fmt == fmt and q.threshold_value == pytest.approx(0.4)
    assert q.shared is not None  # q/k/v share one selection
    dense = _dense_reference(src, th)
    ref_w = dense.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(q.dense_weight(), ref_w)  # bit for bit
    _check_logits(model, dense, config["vocab_size"])


def test_qwen2_biases_and_bf16(tmp_path):
    src = _pruned_dir(tmp_path, "spdp", model_type="qwen2", dtype=torch.bfloat16)
    th = _thresholds(src, 0.3)
    out = run_convert(tmp_path / "out", str(src), "spdp", thresholds=th).out
    model, tok = sparsekit.load(out, device="cpu")
    assert tok is None
    q = model.model.layers[0].self_attn.q_proj
    assert q.bias is not None and q.values.dtype == torch.bfloat16  # stored dtype kept by default
    dense = _dense_reference(src, th, dtype=torch.bfloat16)
    _check_logits(model, dense, 128, atol=2e-2, rtol=2e-2)
    m32, _ = sparsekit.load(out, device="cpu", dtype="float32")
    assert m32.model.layers[0].self_attn.q_proj.values.dtype == torch.float32


def test_load_does_not_pack_again(tmp_path, monkeypatch):
    src = _pruned_dir(tmp_path, "spinfer")
    out = run_convert(tmp_path / "out", str(src), "spinfer").out

    def boom(*a, **k):
        raise AssertionError("loading must read the packed tensors, not pack dense weights")

    monkeypatch.setattr(SparseLinear, "from_linear", classmethod(boom))
    import sparsekit.formats.spinfer as spinfer

    monkeypatch.setattr(spinfer, "encode", boom)
    model, _ = sparsekit.load(out, device="cpu")
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, SparseLinear) and not hasattr(down, "weight")
    assert down.threshold is None and down.threshold_value is None


def test_sharded_checkpoint_loads(tmp_path):
    src = _pruned_dir(tmp_path, "bitmask")
    out = run_convert(tmp_path / "out", str(src), "bitmask", max_shard_bytes=64 * 1024).out
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(shards) <= set(manifest["sha256"])
    model, _ = sparsekit.load(out, device="cpu")
    dense = _dense_reference(src, {n: 0.0 for n in _thresholds(src)})
    assert torch.equal(model.model.layers[1].mlp.up_proj.dense_weight(), dense.model.layers[1].mlp.up_proj.weight)


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "config"])
def test_tampered_dir_is_refused(tmp_path, damage):
    from transformers import AutoModelForCausalLM

    src = _pruned_dir(tmp_path, "spdp")
    out = run_convert(tmp_path / "out", str(src), "spdp").out
    f = out / "model.safetensors"
    if damage == "flip":
        _tamper(f)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size - 100])
    elif damage == "no_manifest":
        (out / MANIFEST).unlink()
    else:
        (out / "config.json").write_text((out / "config.json").read_text().replace('"spdp"', '"spdp" '))
    words = "sparsekit.json" if damage == "no_manifest" else "sha256"
    with pytest.raises(BadInput, match=words) as info:
        sparsekit.load(out, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInput, match=words):
        AutoModelForCausalLM.from_pretrained(out)


def test_two_four_refuses_unstructured_and_writes_nothing(tmp_path):
    src = _pruned_dir(tmp_path, "spdp")  # unstructured 50%: not 2:4
    with pytest.raises(BadInput, match=r"model\.layers\.0\.self_attn\.q_proj is not 2:4: row \d+, inputs \d+-\d+ hold [34] non-zeros"):
        run_convert(tmp_path / "out", str(src), "2:4")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no half-written temporary dir either


def test_spdp_on_dense_model_warns_with_sparsity_and_size(tmp_path):
    d = tmp_path / "dense"
    tiny_model("llama", seed=0).save_pretrained(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run_convert(tmp_path / "out", str(d), "spdp")
    msgs = [str(w.message) for w in caught if "too low for spdp" in str(w.message)]
    assert len(msgs) == 1 and msgs == outcome.warnings
    assert "14 of 14 linears have weight sparsity 0.0%, too low for spdp" in msgs[0] and "x)" in msgs[0]
    s = outcome.manifest["sizes"]
    assert s["linears_bytes"] > s["linears_dense_bytes"]


def test_bad_requests_are_refused_before_writing(tmp_path):
    src = _pruned_dir(tmp_path, "spdp")
    with pytest.raises(BadInput, match="go together"):
        run_convert(tmp_path / "o1", str(src), "teal", activation_sparsity=0.5)
    with pytest.raises(BadInput, match="must be in"):
        run_convert(tmp_path / "o2", str(src), "teal", calibration=tmp_path, activation_sparsity=1.5)
    with pytest.raises(BadInput, match="--format"):
        run_convert(tmp_path / "o3", str(src), "csr")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("mine")
    with pytest.raises(BadInput, match="not empty"):
        run_convert(busy, str(src), "dense")
    out = run_convert(tmp_path / "o4", str(src), "dense").out
    with pytest.raises(BadInput, match="already quantized or converted"):
        run_convert(tmp_path / "o5", str(out), "spdp")
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o5"))
    # an earlier convert output may be replaced
    with pytest.warns(UserWarning, match="teal without --calibration.*runs as dense"):
        run_convert(out, str(src), "teal")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "teal"


def test_write_tensors_single_file_has_pt_metadata(tmp_path):
    from safetensors import safe_open

    names = write_tensors(tmp_path, {"a": torch.zeros(3), "b": torch.tensor(0.25)})
    assert names == ["model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("b").item() == 0.25


def test_demo_model_spdp_logits(tmp_path):
    """The embedded demo model, 50% magnitude-pruned, converted to spdp with thresholds (stored in
    fp16, compared in fp32 so that no activation sits on the threshold by rounding luck)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEMO_DIR, dtype=torch.float16)
    with torch.no_grad():
        for ref in linear_refs(model):
            w = ref.module.weight
            cut = w.abs().float().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
            w.masked_fill_(w.abs().float() <= cut, 0)
    from transformers import AutoTokenizer

    src = tmp_path / "demo-pruned"
    model.save_pretrained(src)
    AutoTokenizer.from_pretrained(DEMO_DIR).save_pretrained(src)
    th = _thresholds(src, 0.05)
    outcome = run_convert(tmp_path / "out", str(src), "spdp", thresholds=th)
    s = outcome.manifest["sizes"]
    assert s["linears_bytes"] < 0.7 * s["linears_dense_bytes"]
    loaded, tokenizer = sparsekit.load(outcome.out, device="cpu", dtype="float32")
    assert tokenizer is not None and tokenizer.vocab_size == model.config.vocab_size
    assert loaded.model.layers[0].mlp.up_proj.values.dtype == torch.float32
    dense = _dense_reference(src, th, dtype=torch.float32)
    _check_logits(loaded, dense, model.config.vocab_size, atol=1e-4, rtol=1e-4)


def test_cli_convert_prints_tables_and_json(tmp_path, capsys):
    from sparsekit.cli import main

    src = _pruned_dir(tmp_path, "spdp")
    main(["convert", "--model", str(src), "--format", "spdp", "--out", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["format"] == "spdp" and len(summary["per_layer"]) == 2
    assert "bytes on disk vs dense" in captured.err and "per decoder layer" in captured.err
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_cli_convert_bad_input_exits_2(tmp_path, capsys):
    from sparsekit.cli import main

    src = _pruned_dir(tmp_path, "spdp")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["convert", "--model", str(src), "--format", "2:4", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not 2:4" in err[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_load_logits_equal_pruned_dense(tmp_path, fmt):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", seed=0, dtype=torch.float16, hidden_size=128, intermediate_size=256)
    for ref in linear_refs(model):
        prune_(ref.module.weight, fmt, seed=ref.layer)
    src = tmp_path / "src"
    model.save_pretrained(src)
    th = _thresholds(src, 0.3)
    out = run_convert(tmp_path / "out", str(src), fmt, thresholds=th).out
    loaded, _ = sparsekit.load(out, device="cuda")
    q = loaded.model.layers[0].self_attn.q_proj
    assert isinstance(q, SparseLinear) and getattr(q, q.value_key).is_cuda
    assert getattr(q, q.value_key).dtype == torch.float16
    dense = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16).eval().cuda()
    _reference_with_thresholds(dense, th)
    assert torch.equal(q.dense_weight(), dense.model.layers[0].self_attn.q_proj.weight)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        a, b = loaded(ids, use_cache=True), dense(ids, use_cache=True)
        torch.testing.assert_close(a.logits, b.logits, atol=2e-2, rtol=2e-2)
        nxt = b.logits[:, -1:].argmax(-1)
        a2 = loaded(nxt, past_key_values=a.past_key_values, use_cache=True).logits
        b2 = dense(nxt, past_key_values=b.past_key_values, use_cache=True).logits
        torch.testing.assert_close(a2, b2, atol=2e-2, rtol=2e-2)
    # from_pretrained straight onto the GPU works as well
    direct = AutoModelForCausalLM.from_pretrained(out, device_map={"": "cuda"})
    assert getattr(direct.model.layers[1].mlp.down_proj, q.value_key).is_cuda


def test_convert_with_calibration_dir_stores_its_thresholds(tmp_path, capsys):
    from safetensors import safe_open

    from sparsekit.activation import Calibration, calibrate_model
    from sparsekit.cli import main

    src = _pruned_dir(tmp_path, "spdp")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    samples = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    calibrate_model(model, samples, device=torch.device("cpu")).save(tmp_path / "cal")
    capsys.readouterr()
    main(["convert", "--model", str(src), "--format", "teal", "--calibration", str(tmp_path / "cal"),
          "--activation-sparsity", "0.5", "--out", str(tmp_path / "out")])
    shown = capsys.readouterr().out
    assert "0.5 (calibrated target)" in shown
    expected = Calibration.load(tmp_path / "cal", model).thresholds(0.5)
    out = tmp_path / "out"
    with safe_open(out / "model.safetensors", "pt") as f:
        for name, t in expected.items():
            assert f.get_tensor(f"{name}.threshold").item() == pytest.approx(t, rel=1e-6)
        # the default rule: the o_proj thresholds are relative to the token's mean |x|
        marked = {k.removesuffix(".threshold_relative") for k in f.keys() if k.endswith(".threshold_relative")}
    assert marked == set(expected.relative) == {n for n in expected if n.endswith("o_proj")}
    assert json.loads((out / "config.json").read_text())["quantization_config"]["threshold_rule"] == "relative"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["activation_sparsity"] == 0.5 and manifest["settings"]["calibration"] == str(tmp_path / "cal")
    assert all(row["activation_sparsity"] == pytest.approx(0.5) for row in manifest["per_layer"])
    assert manifest["per_linear"]["model.layers.1.mlp.down_proj"]["threshold"] == pytest.approx(
        expected["model.layers.1.mlp.down_proj"])
    loaded, _ = sparsekit.load(out, device="cpu")
    assert loaded.model.layers[1].mlp.gate_proj.threshold_value == pytest.approx(expected["model.layers.1.mlp.gate_proj"], rel=1e-6)
    assert {n for n, m in sparse_linears(loaded).items() if m.relative} == set(expected.relative)
    # the converted model decodes exactly as the calibrated HF model with the same thresholds on
    from sparsekit.activation import apply_thresholds

    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        warm = loaded(ids, use_cache=True)
        nxt = warm.logits[:, -1:].argmax(-1)
        got = loaded(nxt, past_key_values=warm.past_key_values, use_cache=True).logits
        pruned = AutoModelForCausalLM.from_pretrained(src).eval()
        with apply_thresholds(pruned, expected, prefill="none"):
            ref = pruned(ids, use_cache=True)
            want = pruned(nxt, past_key_values=ref.past_key_values, use_cache=True).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(BadInput, match="different model"):
        other = tmp_path / "other"
        tiny_model("llama", seed=0, hidden_size=32, intermediate_size=64).save_pretrained(other)
        run_convert(tmp_path / "out2", str(other), "teal", calibration=tmp_path / "cal", activation_sparsity=0.5)
