"""sparsekit profile: attribution of time to categories, the files, the nsys path (with a fake nsys)."""
from __future__ import annotations

import csv
import json
import os
import sys
import textwrap

import pytest
import torch

from sparsekit import nvtx, profiling
from sparsekit.cli import main
from sparsekit.nvtx import CATEGORIES


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- attribution (units)
def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1, "args": args}


def test_host_ranges_split_a_token_by_self_time():
    trace = {"traceEvents": [
        _x("user_annotation", "sk:token:dense:1", 0, 100),
        _x("user_annotation", "sk:layer:0", 10, 80),                      # self: 80 - 30 - 20 - 10 = 20
        _x("user_annotation", "sk:attention:l0.self_attn", 10, 30),       # self: 30 - 12 = 18
        _x("user_annotation", "sk:dense_matmul:l0.q_proj", 12, 12),
        _x("user_annotation", "sk:sparse_matmul:l0.up_proj", 50, 20),     # self: 20 - 5 = 15
        _x("cpu_op", "sparsekit::select", 52, 5),
        _x("cpu_op", "aten::mm", 13, 10),                                 # not a range: stays in its parent
        _x("user_annotation", "sk:norms_elementwise:l0.norm", 75, 10),
    ]}
    rows, methods = profiling.breakdown(profiling.timeline_from_chrome(trace), {"dense": [0.1]})
    (r,) = rows
    expect = {"attention": 18, "selection": 5, "sparse_matmul": 15, "dense_matmul": 12, "norms_elementwise": 10 + 20,
              "other": 20}
    for c in CATEGORIES:
        assert r.ms[c] == pytest.approx(expect[c] / 1e3), c
    assert r.total_ms == pytest.approx(0.1) and r.deviation == pytest.approx(0.0)
    assert "host" in methods["dense"]


def test_gpu_kernels_take_the_range_open_at_launch_and_graph_kernels_their_position():
    ev = [
        # eager reference token: ranges on the host, launches inside them, kernels later on the GPU
        _x("user_annotation", "sk:reftoken:teal", 0, 100),
        _x("user_annotation", "sk:attention:a", 1, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 2, 1, correlation=1),
        _x("user_annotation", "sk:selection:select", 20, 5),
        _x("cuda_driver", "cuLaunchKernel", 21, 1, correlation=2),
        _x("user_annotation", "sk:sparse_matmul:up", 30, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 31, 1, correlation=3),
        _x("cuda_runtime", "cudaLaunchKernel", 50, 1, correlation=4),  # outside any range: other
        _x("kernel", "attn_k", 40, 5, tid=7, correlation=1),
        _x("kernel", "select_k", 46, 2, tid=7, correlation=2),
        _x("kernel", "gemv_k", 49, 10, tid=7, correlation=3),
        _x("kernel", "argmax_k", 60, 1, tid=7, correlation=4),
        # a token replayed from a CUDA graph: one launch, the same kernel sequence
        _x("user_annotation", "sk:token:teal:1", 200, 40),
        _x("cuda_runtime", "cudaLaunchKernel", 200.5, 0.2, correlation=8),  # the replay's own prologue kernel
        _x("kernel", "fill_k", 203, 1, tid=7, correlation=8),
        _x("cuda_runtime", "cudaGraphLaunch", 201, 2, correlation=9),
        _x("kernel", "attn_k", 205, 5, tid=7, correlation=9),
        _x("kernel", "select_k", 210, 2, tid=7, correlation=9),
        _x("kernel", "gemv_k", 213, 10, tid=7, correlation=9),   # 1 us idle before it
        _x("kernel", "argmax_k", 225, 1, tid=7, correlation=9),  # 2 us idle before it
    ]
    rows, methods = profiling.breakdown(profiling.timeline_from_chrome({"traceEvents": ev}), {"teal": [0.023]})
    (r,) = rows
    assert r.ms["attention"] == pytest.approx(0.005)
    assert r.ms["selection"] == pytest.approx(0.002)
    assert r.ms["sparse_matmul"] == pytest.approx(0.010)
    assert r.ms["other"] == pytest.approx(0.001 + 0.001 + 0.004)  # fill + argmax kernels + idle gaps
    assert r.idle_ms == pytest.approx(0.004)
    assert r.total_ms == pytest.approx(0.023)  # first kernel start to last kernel end
    assert "position" in methods["teal"]


def test_graph_kernels_fall_back_to_names_when_the_sequence_differs():
    ref = [("a", "attention"), ("g", "sparse_matmul"), ("g", "sparse_matmul"), ("n", "norms_elementwise")]
    ks = [profiling.Kernel(n, i, i + 1, graph=True) for i, n in enumerate(["g", "a", "x"])]
    cats, method = profiling._device_categories(ks, ref, {})
    assert cats == ["sparse_matmul", "attention", "other"] and "name" in method


def test_category_names():
    assert nvtx.category_of("sk:sparse_matmul:model.layers.0.mlp.up_proj") == "sparse_matmul"
    assert nvtx.category_of("sk:layer:3") == "norms_elementwise"
    assert nvtx.category_of("sparsekit::select") == "selection"
    assert nvtx.category_of("aten::mm") is None and nvtx.category_of("sk:token:x:1") is None
    assert nvtx.parse_token(nvtx.token_range("2:4", 7)) == ("token", "2:4", 7)
    assert nvtx.parse_token(nvtx.ref_token_range("teal")) == ("reftoken", "teal", None)


def test_scopes_are_removed_after_profiling():
    from sparsekit.testing import tiny_model

    model = tiny_model("llama")
    import sparsekit.ops as ops

    select = ops.select
    with nvtx.scopes(model, nvtx=False):
        assert model.model.layers[0]._forward_pre_hooks and ops.select is not select
    assert ops.select is select
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


# ------------------------------------------------------------------------------------ command
def test_profile_demo_files_and_categories_add_up(capsys, tmp_path):
    main(["profile", "--model", "demo", "--max-new-tokens", "4", "--input-tokens", "8", "--outdir", str(tmp_path),
          "--json"])
    summary = json.loads(capsys.readouterr().out)
    for name in ("per_token.csv", "summary.json", "per_token.png", "trace_dense.json.gz"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "per_token.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(tmp_path / "per_token.csv")
    assert [r["token"] for r in rows] == ["1", "2", "3", "4"]
    for r in rows:
        total = sum(float(r[f"{c}_ms"]) for c in CATEGORIES)
        assert total == pytest.approx(float(r["total_ms"]), rel=1e-4)
        assert abs(total - float(r["tpot_ms"])) <= 0.10 * float(r["tpot_ms"])
        assert float(r["attention_ms"]) > 0 and float(r["dense_matmul_ms"]) > 0
        assert float(r["sparse_matmul_ms"]) == 0 and float(r["selection_ms"]) == 0
    v = summary["variants"]["dense"]
    assert v["adds_up"] is True and v["tokens"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["variants"]["dense"]["tokens"] == 4


def test_profile_sparse_against_dense(capsys, tmp_path):
    main(["profile", "--model", "synthetic:tiny", "--format", "teal", "--activation-sparsity", "0.5",
          "--baseline", "dense", "--max-new-tokens", "3", "--input-tokens", "4", "--outdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "measured TPOT" in out and "teal" in out
    rows = _rows(tmp_path / "per_token.csv")
    assert {r["model"] for r in rows} == {"dense", "teal"}
    for r in rows:
        if r["model"] == "teal":
            assert float(r["selection_ms"]) > 0 and float(r["sparse_matmul_ms"]) > 0
        else:
            assert float(r["selection_ms"]) == 0 and float(r["sparse_matmul_ms"]) == 0
    assert (tmp_path / "trace_teal.json.gz").exists() and (tmp_path / "trace_dense.json.gz").exists()


def test_nsys_without_nsys_is_bad_input(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--nsys", "--outdir", str(tmp_path / "o")])
    assert exc.value.code == 2 and "nsys" in capsys.readouterr().err


# ------------------------------------------------------------------------- the nsys path (fake)
# A stand-in for Nsight Systems: `profile` runs the application (our child, which writes its step
# wall times), `export --type=sqlite` writes a report in nsys's SQLite schema (StringIds,
# NVTX_EVENTS, CUPTI_ACTIVITY_KIND_KERNEL/RUNTIME) whose kernels have known categories: an eager
# reference token with NVTX ranges around the launches, then tokens replayed from a CUDA graph.
FAKE_NSYS = textwrap.dedent('''\
    #!{python}
    import json, os, sqlite3, subprocess, sys
    args = sys.argv[1:]
    opt = lambda name: next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))
    if args[0] == "profile":
        app = args[next(i for i, a in enumerate(args) if i > 0 and not a.startswith("-")):]
        rc = subprocess.run(app).returncode
        json.dump({{"spec": app[-1]}}, open(opt("--output") + ".nsys-rep", "w"))
        sys.exit(rc)
    assert args[0] == "export" and opt("--type") == "sqlite"
    spec = json.load(open(json.load(open(args[-1]))["spec"]))
    walls = json.load(open(os.path.join(spec["outdir"], "nsys_walls.json")))["walls"]
    con = sqlite3.connect(opt("--output"))
    con.executescript("""
    CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE NVTX_EVENTS (start INT NOT NULL, end INT, eventType INT NOT NULL, rangeId INT, category INT,
        color INT, text TEXT, globalTid INT, endGlobalTid INT, textId INT, domainId INT);
    CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INT NOT NULL, end INT NOT NULL, deviceId INT, contextId INT,
        streamId INT, correlationId INT, globalPid INT, demangledName INT, shortName INT, mangledName INT);
    CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INT NOT NULL, end INT NOT NULL, eventClass INT,
        globalTid INT, correlationId INT, nameId INT, returnValue INT, callchainId INT);
    """)
    strings = {{}}
    def sid(s):
        if s not in strings:
            strings[s] = len(strings) + 1
            con.execute("INSERT INTO StringIds VALUES (?, ?)", (strings[s], s))
        return strings[s]
    TID = 4242
    def nvtx(name, a, b, registered=False):
        con.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, textId) VALUES (?,?,59,?,?,?)",
                    (a, b, None if registered else name, TID, sid(name) if registered else None))
    corr = [0]
    def launch(api, t):
        corr[0] += 1
        con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, end, globalTid, correlationId, nameId) "
                    "VALUES (?,?,?,?,?)", (t, t + 100, TID, corr[0], sid(api)))
        return corr[0]
    def kernel(name, a, b, c):
        con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, correlationId, demangledName, shortName) "
                    "VALUES (?,?,?,?,?)", (a, b, c, sid(name + "_long"), sid(name)))
    # fractions of a token: attention .2, selection .1, matmul .4, norm .1; idle gaps .2 (other)
    plan = [("attn_k", "attention", .0, .2), ("sel_k", "selection", .25, .35), ("gemv_k", "MATMUL", .4, .8),
            ("norm_k", "norms_elementwise", .9, 1.0)]
    t = 10 ** 9
    for label, ws in walls.items():
        mm = "sparse_matmul" if label != "dense" else "dense_matmul"
        ref0 = t
        nvtx("sk:reftoken:" + label, t, t + 10 ** 6, registered=True)
        nvtx("sk:layer:0", t + 10, t + 900000)
        corrs = []
        for i, (kname, cat, a, b) in enumerate(plan):
            cat = mm if cat == "MATMUL" else cat
            nvtx("sk:%s:x%d" % (cat, i), t + 1000 * (i + 1), t + 1000 * (i + 1) + 500)
            corrs.append(launch("cudaLaunchKernel_v7000", t + 1000 * (i + 1) + 100))
        for (kname, cat, a, b), c in zip(plan, corrs):
            kernel(kname, t + 10 ** 5 + int(a * 10 ** 5), t + 10 ** 5 + int(b * 10 ** 5), c)
        t += 2 * 10 ** 6
        for i, w in enumerate(ws, start=1):
            ns = int(w * 10 ** 6)
            nvtx("sk:token:%s:%d" % (label, i), t, t + ns + 2000)
            c = launch("cudaGraphLaunch_v10000", t + 100)
            for kname, cat, a, b in plan:
                kernel(kname, t + 1000 + int(a * ns), t + 1000 + int(b * ns), c)
            t += ns + 10 ** 6
    con.commit()
    ''')


def test_nsys_path_with_a_fake_nsys(capsys, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nsys"
    fake.write_text(FAKE_NSYS.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "prof"
    main(["profile", "--nsys", "--model", "synthetic:tiny", "--format", "teal", "--activation-sparsity", "0.5",
          "--baseline", "dense", "--max-new-tokens", "3", "--input-tokens", "4", "--outdir", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"] == "nsys"
    walls = json.loads((out / "nsys_walls.json").read_text())["walls"]
    assert set(walls) == {"teal", "dense"} and all(len(w) == 3 for w in walls.values())
    rows = _rows(out / "per_token.csv")
    assert len(rows) == 6
    for r in rows:
        w = walls[r["model"]][int(r["token"]) - 1]
        mm = "sparse_matmul" if r["model"] == "teal" else "dense_matmul"
        expect = {"attention": .2 * w, "selection": .1 * w, mm: .4 * w, "norms_elementwise": .1 * w, "other": .2 * w}
        for c in CATEGORIES:
            assert float(r[f"{c}_ms"]) == pytest.approx(expect.get(c, 0.0), abs=2e-5), (r, c)
        assert float(r["idle_ms"]) == pytest.approx(.2 * w, abs=2e-5)
    for v in summary["variants"].values():
        assert v["adds_up"] and "position" in v["attribution"]
    for name in ("per_token.png", "summary.json", "trace_nsys.json", "nsys_report.sqlite"):
        assert (out / name).exists(), name


def test_fake_nsys_matches_real_schema_columns():
    """The columns the reader uses are those nsys documents (guards the fake against drift)."""
    import inspect

    src = inspect.getsource(profiling.timeline_from_nsys)
    for col in ("NVTX_EVENTS", "eventType = 59", "textId", "globalTid", "CUPTI_ACTIVITY_KIND_KERNEL",
                "demangledName", "shortName", "correlationId", "CUPTI_ACTIVITY_KIND_RUNTIME", "nameId"):
        assert col in src and col.split(" ")[0] in FAKE_NSYS


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_on_gpu_graph_mode(capsys, tmp_path):
    main(["profile", "--model", "synthetic:tiny", "--format", "teal", "--activation-sparsity", "0.5",
          "--baseline", "dense", "--max-new-tokens", "4", "--input-tokens", "8", "--outdir", str(tmp_path),
          "--dtype", "float16", "--json"])
    summary = json.loads(capsys.readouterr().out)
    for label, v in summary["variants"].items():
        assert v["tokens"] == 4
        assert sum(v["mean_ms"].values()) > 0


def test_profile_and_bench_a_converted_model(capsys, tmp_path):
    from sparsekit.testing import tiny_model

    tiny_model("llama", seed=7).save_pretrained(tmp_path / "dense")
    main(["convert", "--model", str(tmp_path / "dense"), "--format", "teal", "--out", str(tmp_path / "teal")])
    capsys.readouterr()
    main(["profile", "--model", str(tmp_path / "teal"), "--baseline", "dense", "--max-new-tokens", "3",
          "--input-tokens", "4", "--outdir", str(tmp_path / "prof"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["variants"]) == {"teal", "dense"}
    assert summary["variants"]["teal"]["mean_ms"]["sparse_matmul"] > 0
    assert summary["variants"]["dense"]["mean_ms"]["sparse_matmul"] == 0
    main(["bench", "--model", str(tmp_path / "teal"), "--baseline", "dense", "--input-tokens", "4",
          "--max-new-tokens", "5", "--warmup", "0", "--repeat", "1", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert res["settings"]["kind"] == "converted"
    # teal without thresholds is exact: the converted model and its dense form decode the same tokens
    assert res["runs"]["sparse"]["first_tokens"] == res["runs"]["dense"]["first_tokens"]
