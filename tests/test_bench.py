"""sparsekit bench: metrics, synthetic models, bytes touched, the command on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from sparsekit import bench, synthetic
from sparsekit.cli import main
from sparsekit.errors import BadInput
from sparsekit.runtime.generate import RunTiming
from sparsekit.testing import tiny_model

VLLM_KEYS = ["mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
             "p90_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "output_throughput", "completed",
             "total_input_tokens", "total_output_tokens", "duration"]


def _cli_json(capsys, *args):
    main(["bench", *args, "--json"])
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


# ----------------------------------------------------------------------------------- metrics
def test_summarize_follows_the_definitions():
    runs = [RunTiming(ttft_ms=t, latency_ms=t + 30.0 * k, new_tokens=4, step_ms=[k * 10.0] * 3)
            for t, k in [(10.0, 1), (20.0, 2), (30.0, 3)]]
    m = bench.summarize(runs, batch_size=2, input_tokens=5, save_per_iter=True)
    assert m["mean_ttft_ms"] == pytest.approx(20.0)
    assert m["median_ttft_ms"] == pytest.approx(20.0)
    assert m["mean_tpot_ms"] == pytest.approx(20.0)  # (latency - ttft) / 3 = 10, 20, 30
    assert m["p90_tpot_ms"] == pytest.approx(28.0)
    assert m["mean_itl_ms"] == pytest.approx(20.0)
    assert m["completed"] == 6 and m["total_output_tokens"] == 24 and m["total_input_tokens"] == 30
    duration = (40 + 80 + 120) / 1e3
    assert m["duration"] == pytest.approx(duration)
    assert m["output_throughput"] == pytest.approx(24 / duration)
    assert m["decode_throughput"] == pytest.approx(2 / 0.020)
    assert [r["tpot_ms"] for r in m["per_iter"]] == pytest.approx([10.0, 20.0, 30.0])


def test_speedups_are_dense_over_sparse():
    results = {"dense": {"mean_tpot_ms": 6.0, "mean_ttft_ms": 10.0}, "sparse": {"mean_tpot_ms": 3.0, "mean_ttft_ms": 10.5}}
    bench.add_speedups(results)
    assert results["sparse"]["speedup_tpot_vs_dense"] == pytest.approx(2.0)
    assert results["sparse"]["ttft_ratio_vs_dense"] == pytest.approx(1.05)
    assert results["dense"]["speedup_tpot_vs_dense"] == pytest.approx(1.0)


def test_kv_and_weight_bytes():
    model = tiny_model("llama")  # 2 layers, 2 kv heads of 16, fp32
    assert bench.kv_bytes_per_step(model, batch_size=3, kv_len=10) == 2 * 2 * 3 * 2 * 16 * 10 * 4
    c = model.config
    layer = sum(p.numel() for p in model.model.layers.parameters()) * 4
    expect = layer + c.hidden_size * 4 + model.lm_head.weight.numel() * 4 + c.hidden_size * 4
    rotary = sum(b.numel() * b.element_size() for b in model.model.rotary_emb.buffers())
    assert bench.weight_bytes_per_step(model, 0.0) in (expect, expect + rotary)


def test_device_bandwidth_is_positive():
    assert bench.device_bandwidth_gbs(torch.device("cpu"), nbytes=1 << 20) > 0


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_shapes_and_device_construction():
    cfg = synthetic.config_for("synthetic:llama-2-7b")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size) == (4096, 11008, 32, 32, 32, 32000)
    cfg = synthetic.config_for("synthetic:llama-3-8b")
    assert (cfg.intermediate_size, cfg.num_key_value_heads, cfg.vocab_size) == (14336, 8, 128256)
    assert synthetic.config_for("synthetic:mistral-7b").model_type == "mistral"
    # built where asked: on the meta device nothing is allocated, so a 7B model costs nothing here
    model = synthetic.build("synthetic:llama-2-7b", torch.device("meta"), torch.float16)
    assert all(p.is_meta for p in model.parameters())
    assert model.model.layers[0].mlp.down_proj.weight.shape == (4096, 11008)
    with pytest.raises(BadInput, match="unknown synthetic model"):
        synthetic.config_for("synthetic:gpt-5")


def test_random_masks_are_exact_per_row_and_nested():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(37, 50) + 5.0  # no zeros to begin with
    synthetic.prune_random_(w, 0.5, gen, chunk_rows=8)
    assert ((w == 0).sum(1) == 25).all()
    mask50 = w == 0
    synthetic.prune_random_(w, 0.6, gen)
    assert ((w == 0).sum(1) == 30).all()
    assert (w[mask50] == 0).all()  # the 0.6 mask contains the 0.5 one
    w24 = torch.randn(6, 16) + 5.0
    synthetic.prune_random_(w24, 0.5, gen, structure="2:4")
    assert ((w24.view(6, 4, 4) == 0).sum(-1) == 2).all()


def test_thresholds_hit_the_activation_sparsity():
    from sparsekit.kernels.reference import mask_relative

    model = tiny_model("llama", seed=3)
    t = synthetic.calibrate_thresholds(model, 0.5, seed=1, tokens=64)
    assert len(t) == 7 * model.config.num_hidden_layers
    assert t["model.layers.0.self_attn.q_proj"] == t["model.layers.0.self_attn.v_proj"]
    assert t["model.layers.1.mlp.gate_proj"] == t["model.layers.1.mlp.up_proj"]
    # on fresh random tokens, each site drops about half of its inputs
    seen = {}
    hooks = [model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("down", a[0])),
             model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("o", a[0]))]
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 64), generator=torch.Generator().manual_seed(9)))
    for h in hooks:
        h.remove()
    down, o = "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"
    assert t.relative == {f"model.layers.{i}.self_attn.o_proj" for i in range(model.config.num_hidden_layers)}
    assert 0.4 < (seen["down"].abs() <= t[down]).float().mean().item() < 0.6
    assert 0.4 < (mask_relative(seen["o"], t[o]) == 0).float().mean().item() < 0.6
    absolute = synthetic.calibrate_thresholds(model, 0.5, seed=1, tokens=64, rule="absolute")
    assert not absolute.relative and absolute[down] == t[down] and absolute[o] != t[o]


def test_densify_restores_the_dense_model():
    from sparsekit.runtime.patch import convert_model

    model = tiny_model("llama", seed=5)
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        convert_model(model, "teal", None)
        assert bench.densify_(model) == 7 * model.config.num_hidden_layers
        assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
        torch.testing.assert_close(model(input_ids=ids).logits, ref)


def test_autotune_follows_compile_and_mode():
    """Coordinate-descent tuning is on wherever the forwards are compiled in graph mode, unless turned off, and
    never without compiling."""
    from sparsekit.bench import Settings, autotune_enabled

    assert autotune_enabled(Settings(), "graph") is True
    assert autotune_enabled(Settings(autotune=False), "graph") is False
    assert autotune_enabled(Settings(compile=False), "graph") is False
    assert autotune_enabled(Settings(), "eager") is False  # eager mode compiles nothing by default
    assert autotune_enabled(Settings(compile=True), "eager") is False
    assert autotune_enabled(Settings(compile=True, autotune=True), "eager") is True


def test_session_passes_inductor_settings_and_env_overrides_them(monkeypatch):
    """The compiled forwards get the given inductor settings; SPARSEKIT_INDUCTOR (experiments) overrides them."""
    import torch._inductor.config as cfg

    from sparsekit.runtime import generate

    seen = []

    def fake_compile(fn, backend, dynamic):
        def run():
            seen.append({"coordinate_descent_tuning": cfg.coordinate_descent_tuning, "combo_kernels": cfg.combo_kernels})
            return fn()
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny_model("llama", seed=2)
    monkeypatch.setenv("SPARSEKIT_INDUCTOR", "combo_kernels=1")
    generate.DecodeSession(model, batch_size=1, prompt_len=4, max_new_tokens=2, compile=True,
                           inductor={"coordinate_descent_tuning": True})
    assert seen and all(s == {"coordinate_descent_tuning": True, "combo_kernels": True} for s in seen)
    seen.clear()
    monkeypatch.setenv("SPARSEKIT_INDUCTOR", "coordinate_descent_tuning=0")
    generate.DecodeSession(model, batch_size=1, prompt_len=4, max_new_tokens=2, compile=True,
                           inductor={"coordinate_descent_tuning": True})
    assert seen and all(s["coordinate_descent_tuning"] is False for s in seen)


# ------------------------------------------------------------------------------------ command
def test_bench_demo_on_cpu_writes_json(capsys, tmp_path):
    res, err = _cli_json(capsys, "--model", "demo", "--input-tokens", "8", "--max-new-tokens", "4", "--warmup", "1",
                    "--repeat", "2", "--outdir", str(tmp_path), "--save-per-iter")
    for key in VLLM_KEYS + ["bandwidth_gbs", "floor_tpot_ms", "device_bandwidth_gbs", "settings", "environment"]:
        assert key in res, key
    assert res["timing_device"] == "cpu" and res["settings"]["mode"] == "eager"
    assert res["settings"]["autotune"] is False  # nothing compiled in eager mode: nothing to tune
    assert res["completed"] == 2 and res["total_output_tokens"] == 8
    assert res["tokens_identical_across_repeats"] is True
    assert len(res["per_iter"]) == 2 and len(res["per_iter"][0]["step_ms"]) == 3
    assert res["mean_tpot_ms"] > 0 and res["bandwidth_gbs"] > 0 and res["floor_tpot_ms"] > 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["mean_tpot_ms"] == res["mean_tpot_ms"]


def test_bench_synthetic_sparse_against_dense(capsys):
    res, err = _cli_json(capsys, "--model", "synthetic:tiny", "--format", "teal", "--activation-sparsity", "0.5",
                    "--baseline", "dense", "--input-tokens", "8", "--max-new-tokens", "4", "--warmup", "1", "--repeat", "2")
    assert set(res["runs"]) == {"sparse", "dense"}
    sparse, dense = res["runs"]["sparse"], res["runs"]["dense"]
    assert sparse["format"] == "teal" and sparse["activation_sparsity"] == 0.5
    assert sparse["speedup_tpot_vs_dense"] == pytest.approx(dense["mean_tpot_ms"] / sparse["mean_tpot_ms"])
    # teal at s2 = 0.5 reads half of the decoder weights
    assert sparse["weight_bytes_per_step"] < dense["weight_bytes_per_step"]
    assert res["conversion"]["format"] == "teal"
    assert any("meaningless" in w for w in res["warnings"])
    assert "CPU timings" in err and "TPOT speedup vs dense" in err  # the table goes to stderr with --json


@pytest.mark.parametrize("args, words", [
    (["--attn", "flash_attention_2"], "flash"),
    (["--mode", "graph", "--device", "cpu"], "CUDA"),
    (["--model", "synthetic:nope"], "unknown synthetic model"),
    (["--format", "bogus"], "--format"),
    (["--baseline", "sparse"], "--baseline"),
    (["--weight-sparsity", "1.5"], "--weight-sparsity"),
    (["--format", "2:4", "--weight-sparsity", "0.3"], "2:4"),
])
def test_bad_input_is_one_sentence_exit_2(capsys, args, words):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cpu", *args])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and words in err[0], err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_graph_mode_on_gpu(capsys):
    res, _ = _cli_json(capsys, "--model", "synthetic:tiny", "--format", "teal", "--activation-sparsity", "0.5",
                       "--baseline", "dense", "--dtype", "float16", "--input-tokens", "8", "--max-new-tokens", "8",
                       "--warmup", "1", "--repeat", "2")
    assert res["timing_device"] == "cuda" and res["settings"]["mode"] == "graph"
    for r in res["runs"].values():
        assert r["decode_graph"] is True, r["notes"]
        assert r["tokens_identical_across_repeats"] is True
    assert 0 < res["device_bandwidth_gbs"] < 20000
