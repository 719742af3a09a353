"""``sparsekit kernel-test`` through the command-line entry point."""
from __future__ import annotations

import json

import pytest
import torch

from sparsekit import _ext, ops
from sparsekit.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


BACKEND = "cpu" if _ext.load() is not None else "reference"


@pytest.fixture
def one_tiny_shape(monkeypatch):
    from sparsekit import kernel_test as kt

    monkeypatch.setattr(kt, "SHAPES", {**kt.SHAPES, "tiny": [(37, 29)]})


def test_tiny_cpu_passes_and_prints_json(capsys):
    code, out, err = _run(["kernel-test", "--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", BACKEND,
                           "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    checks = res["checks"]
    backend = BACKEND
    ops_seen = {c["op"] for c in checks if c["backend"] == backend}
    assert ops_seen == {"select", "teal_matvec", "teal_matvec_sel", "teal_matvec_rel", "teal_matvec_glu", "spdp_matvec",
                        "spdp_matvec_sel", "spdp_matvec_rel", "spdp_matvec_glu", "spinfer_matmul", "rowdelta_matvec", "spdp_decode"}
    assert all(c["passed"] for c in checks) and {c["tokens"] for c in checks} == {1, 3, 17}
    assert {c["tokens"] for c in checks if c["op"] == "spdp_decode"} == {1}  # one check per shape and dtype
    assert "checks passed" in err and res["bench"] == []


def test_bad_options_exit_2(capsys):
    code, _, err = _run(["kernel-test", "--shapes", "huge", "--device", "cpu"], capsys)
    assert code == 2 and "--shapes" in err
    code, _, err = _run(["kernel-test", "--dtype", "int8", "--device", "cpu"], capsys)
    assert code == 2 and "--dtype" in err


def test_a_wrong_kernel_fails_with_exit_1(capsys, monkeypatch, one_tiny_shape):
    real = ops.teal_matvec

    def broken(x, w_t, threshold, *, backend=None):
        y = real(x, w_t, threshold, backend=backend)
        y.view(-1)[-1] += 1.0
        return y

    monkeypatch.setattr(ops, "teal_matvec", broken)
    code, _, err = _run(["kernel-test", "--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", "reference"], capsys)
    assert code == 1 and "teal_matvec" in err and "failed" in err


def test_a_wrong_decode_fails_with_exit_1(capsys, monkeypatch, one_tiny_shape):
    real = ops.spdp_decode

    def broken(packed, *, backend=None):  # one element off by one ulp: the decode must be bit-exact
        w = real(packed, backend=backend)
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf"), dtype=w.dtype))
        return w

    monkeypatch.setattr(ops, "spdp_decode", broken)
    code, _, err = _run(["kernel-test", "--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", "reference"], capsys)
    assert code == 1 and "spdp_decode" in err and "failed" in err


def test_unwritten_output_is_caught(capsys, monkeypatch, one_tiny_shape):
    def lazy(x, w_t, threshold, *, backend=None):  # allocates and never writes its output
        return torch.empty((*x.shape[:-1], w_t.shape[1]), dtype=x.dtype)

    monkeypatch.setattr(ops, "teal_matvec", lazy)
    code, _, err = _run(["kernel-test", "--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", "reference"], capsys)
    assert code == 1 and "teal_matvec" in err


@pytest.mark.ext
def test_bench_smoke(capsys, monkeypatch, one_tiny_shape):
    from sparsekit import kernel_test as kt

    monkeypatch.setattr(kt, "copy_bandwidth", lambda device: 10.0)
    code, out, err = _run(["kernel-test", "--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", "cpu",
                           "--bench", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["bench"]
    assert {r["op"] for r in rows} == {"select", "teal_matvec", "spdp_matvec", "spinfer_matmul", "rowdelta_matvec"}
    assert {r["s2"] for r in rows if r["op"] == "spdp_matvec"} == {0.0, 0.25, 0.5, 0.7, 0.9}
    assert {(r["s1"], r["tokens"]) for r in rows if r["op"] == "rowdelta_matvec"} == {(0.0, 1), (0.5, 1), (0.7, 1)}
    assert {r["s1"] for r in rows if r["op"] == "spdp_matvec"} == {0.0, 0.5, 0.7}
    assert all(r["ms"] > 0 and r["speedup"] > 0 and r["gbs"] > 0 for r in rows)
