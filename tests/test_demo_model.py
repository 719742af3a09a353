"""Fast checks of the embedded demo model in sparsekit/demo (no weights are run)."""

import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "sparsekit" / "demo"

FILES = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "calib.txt",
    "eval.txt",
    "split.json",
]


def test_files_exist_and_size():
    for name in FILES:
        assert (DEMO / name).is_file(), name
    assert (DEMO / "model.safetensors").stat().st_size <= 15 * 2**20
    for name in ("calib.txt", "eval.txt"):
        text = (DEMO / name).read_text()
        assert len(text) > 50_000 and text.isascii()


def test_config_is_llama_gqa():
    cfg = json.loads((DEMO / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert 4 <= cfg["num_hidden_layers"] <= 8
    assert cfg["hidden_size"] % 64 == 0 and cfg["intermediate_size"] % 64 == 0
    assert cfg["tie_word_embeddings"] is False
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float16"
    assert cfg["vocab_size"] == 4096


def test_safetensors_float16_and_shapes():
    safetensors = pytest.importorskip("safetensors")
    cfg = json.loads((DEMO / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    with safetensors.safe_open(str(DEMO / "model.safetensors"), framework="numpy") as f:
        keys = set(f.keys())
        assert "lm_head.weight" in keys and "model.embed_tokens.weight" in keys
        k = f.get_slice("model.layers.0.self_attn.k_proj.weight")
        assert k.get_shape() == [cfg["num_key_value_heads"] * head_dim, cfg["hidden_size"]]
        assert k.get_dtype() == "F16"
        n_layers = len({k.split(".")[2] for k in keys if k.startswith("model.layers.")})
        assert n_layers == cfg["num_hidden_layers"]


def test_tokenizer_round_trip():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(DEMO))
    assert len(tok) == 4096
    cfg = json.loads((DEMO / "config.json").read_text())
    assert tok.bos_token_id == cfg["bos_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    line = "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer"
    ids = tok(line)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert len(ids) < len(line) // 2  # BPE actually merges
    assert tok.decode(ids, skip_special_tokens=True) == line


def test_split_disjoint():
    split = json.loads((DEMO / "split.json").read_text())
    ev, ca, tr = set(split["eval"]), set(split["calib"]), set(split["train"])
    assert len(ev) == 2 and len(ca) == 2 and len(tr) >= 30
    assert not (ev & ca) and not (ev & tr) and not (ca & tr)
