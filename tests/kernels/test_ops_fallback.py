"""sparsekit.ops without the compiled library, and the backend choice."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sparsekit import _ext, ops

_CHILD = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    import sparsekit.ops as ops
    from sparsekit import _ext
    from sparsekit.kernels import reference as ref
    from sparsekit.formats import spdp, spinfer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=g)
    w = torch.randn(20, 50, generator=g)
    w[torch.rand(20, 50, generator=g) < 0.5] = 0
    want = ref.mask_activations(x, 0.4) @ w.T
    got = [ops.teal_matvec(x, w.t().contiguous(), 0.4), ops.spdp_matvec(x, spdp.encode(w), 0.4),
           ops.teal_matvec_sel(*ops.select(x, 0.4), w.t().contiguous())]
    ok = all(torch.allclose(y, want, atol=1e-5) for y in got)
    ok = ok and torch.allclose(ops.spinfer_matmul(x, spinfer.encode(w)), x @ w.T, atol=1e-5)
    ours = [str(c.message) for c in caught if "sparsekit" in str(c.message)]
print(json.dumps({"ok": ok, "warnings": ours, "backends": ops.available_backends("cpu"),
                  "chosen": ops.get_backend("cpu"), "module": _ext.load() is None}))
"""


def test_import_without_extension_warns_once_and_falls_back():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPARSEKIT_BACKEND")}
    env["SPARSEKIT_SKIP_EXT"] = "1"
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"]
    assert len(res["warnings"]) == 1 and "SPARSEKIT_SKIP_EXT" in res["warnings"][0]
    assert res["backends"] == ["reference"] and res["chosen"] == "reference" and res["module"]


@pytest.mark.ext
def test_backend_choice(monkeypatch):
    monkeypatch.delenv("SPARSEKIT_BACKEND", raising=False)
    assert ops.get_backend("cpu") == "cpu"
    assert ops.available_backends("cpu")[0] == "cpu" and ops.available_backends("cpu")[-1] == "reference"
    monkeypatch.setenv("SPARSEKIT_BACKEND", "reference")
    assert ops.get_backend("cpu") == "reference"
    ops.set_backend("cpu")
    try:
        assert ops.get_backend("cpu") == "cpu"
    finally:
        ops.set_backend(None)
    with pytest.raises(ValueError):
        ops.set_backend("nope")
    x, w_t = torch.randn(1, 8), torch.randn(8, 4)
    with pytest.raises((ValueError, RuntimeError)):
        ops.teal_matvec(x, w_t, 0.0, backend="cuda")
    with pytest.raises(ValueError):
        ops.teal_matvec(x, w_t, 0.0, backend="gpu")


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_mismatched_inputs_get_one_sentence(backend):
    """The op wrappers check shapes in Python (ValueError) before any kernel runs (and, for the CUDA
    kernels, that x and the weights share dtype and device; the CPU kernels take mixed dtypes)."""
    from sparsekit.formats import spdp

    x = torch.randn(2, 40)
    w_t = torch.randn(40, 24)
    packed = spdp.encode(w_t.t().contiguous(), 32)
    for call in (lambda: ops.teal_matvec(x[:, :39], w_t, 0.1, backend=backend),
                 lambda: ops.teal_matvec_rel(x[:, :39], w_t, 0.1, backend=backend),
                 lambda: ops.teal_matvec_glu(x, w_t, 0.1, backend=backend),  # needs [..., 80]
                 lambda: ops.teal_matvec_sel(*ops.select(x[:, :39], 0.1), w_t, backend=backend),
                 lambda: ops.spdp_matvec(x[:, :39], packed, 0.1, backend=backend),
                 lambda: ops.spdp_matvec_glu(torch.randn(2, 79), packed, 0.1, backend=backend)):
        with pytest.raises(ValueError):
            call()
