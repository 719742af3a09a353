"""The only door to the kernels. Every op takes an optional ``backend=``:

- ``"reference"``: plain PyTorch (``sparsekit.kernels.reference``, the definition of every op);
- ``"cpu"``: the compiled C++ kernels (``sparsekit._C``) on CPU tensors;
- ``"cuda"``: the compiled CUDA kernels on CUDA tensors (when ``_C`` was built with CUDA);
- ``"triton"``: ``sparsekit.kernels.triton`` (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).

Without ``backend=``, the one set by ``set_backend(name)`` or env ``SPARSEKIT_BACKEND`` is used;
otherwise the best available for the input's device: CUDA tensors -> cuda, else triton, else
reference; CPU tensors -> cpu, else reference. ``available_backends(device)`` lists them.

Ops (shapes and semantics: ``sparsekit.kernels.reference``):
``select(x, t)``, ``teal_matvec(x, w_t, t)``, ``teal_matvec_sel(xs, idx, nnz, w_t)``,
``spdp_matvec(x, packed, t)``, ``spdp_matvec_sel(xs, idx, nnz, packed)``, the relative rule fused
(``teal_matvec_rel(x, w_t, t)``, ``spdp_matvec_rel(x, packed, t)``: one CUDA kernel; the other
backends mask in torch and run the plain op),
the SwiGLU input fused (``teal_matvec_glu(gu, w_t, t)``, ``spdp_matvec_glu(gu, packed, t)``: ``gu`` holds
the stacked gate/up outputs and the product reads ``silu(gate) * up``; one CUDA kernel, composed
elsewhere), ``spinfer_matmul(x, packed)``, ``rowdelta_matvec(x, packed)`` (one token, unstructured
weights), ``spdp_decode(packed)`` (the prefill path), where ``packed`` is the dict of ``sparsekit.formats.spdp`` /
``sparsekit.formats.spinfer`` / ``sparsekit.formats.rowdelta`` (keep its ``shape`` on the CPU, or a tuple, so reading it never
waits for the GPU). The compiled ops are ``torch.ops.sparsekit.*``; each has a fake (meta)
implementation registered here so ``torch.compile`` and CUDA-graph capture can trace them.
"""
from __future__ import annotations

import os

import torch

from sparsekit import _ext
from sparsekit.kernels import reference

BACKENDS = ("reference", "cpu", "triton", "cuda")
_forced: str | None = None
_C = _ext.load()  # warns once if the compiled library is missing


# ---------------------------------------------------------------------------------- backends
def _triton_usable(device_type: str) -> bool:
    if device_type == "cuda":
        from sparsekit.kernels import triton as tk

        return tk.available()
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        from sparsekit.kernels import triton as tk

        return tk.available()
    return False


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on ``device`` here, best first."""
    dev = torch.device(device)
    out = []
    if dev.type == "cuda":
        if _C is not None and _ext.has_cuda():
            out.append("cuda")
        if _triton_usable("cuda"):
            out.append("triton")
    elif dev.type == "cpu":
        if _C is not None:
            out.append("cpu")
        if _triton_usable("cpu"):
            out.append("triton")
    out.append("reference")
    return out


def set_backend(name: str | None) -> None:
    """Use ``name`` for every op call without ``backend=`` (None: back to env / automatic)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _forced = name


def get_backend(device: str | torch.device = "cpu") -> str:
    """The backend an op on ``device`` would use now."""
    return _choose(torch.device(device).type, None)


def _choose(device_type: str, backend: str | None) -> str:
    name = backend or _forced or os.environ.get("SPARSEKIT_BACKEND") or None
    if name is None or name == "auto":
        if device_type == "cuda":
            if _C is not None and _ext.has_cuda():
                return "cuda"
            return "triton" if _triton_usable("cuda") else "reference"
        return "cpu" if device_type == "cpu" and _C is not None else "reference"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "reference":
        return name
    if name in ("cpu", "cuda"):
        if _C is None:
            raise RuntimeError(f"backend {name!r} needs the compiled library, which is not loaded ({_ext.reason})")
        if name != device_type:
            raise ValueError(f"backend {name!r} cannot run on {device_type} tensors")
        if name == "cuda" and not _ext.has_cuda():
            raise RuntimeError("backend 'cuda' asked for, but sparsekit._C was built without CUDA kernels")
        return name
    if not _triton_usable(device_type):
        raise RuntimeError(f"backend 'triton' cannot run on {device_type} tensors here (CPU needs TRITON_INTERPRET=1)")
    return name


def _triton():
    from sparsekit.kernels import triton as tk

    return tk


def _dev(t: torch.Tensor) -> str:
    return t.device.type


# ------------------------------------------------------------------------------------------ ops
def select(x: torch.Tensor, threshold: float, *, backend: str | None = None):
    """``(xs, idx, nnz)``: masked input, active channels (union over tokens, ascending), their count."""
    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.select(x, threshold)
    if b == "triton":
        return _triton().select(x, float(threshold))
    return torch.ops.sparsekit.select(x, float(threshold))


def _check_cuda_args(b: str, x: torch.Tensor, w: torch.Tensor, what: str) -> None:
    """The CUDA kernels take weights in x's dtype on x's device (the CPU kernels also take mixed dtypes).
    Shapes, dtypes and devices are checked here in Python (one ValueError sentence) before any kernel
    sees them: a failed check inside the compiled CUDA ops crashed the process on the lent H200 image
    (NOTES, seventh session) instead of raising."""
    if b == "cuda" and (x.dtype != w.dtype or x.device != w.device):
        raise ValueError(f"the CUDA kernels need x ({x.dtype}, {x.device}) and {what} ({w.dtype}, {w.device}) "
                         "in one dtype on one device")


def teal_matvec(x: torch.Tensor, w_t: torch.Tensor, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask(x, threshold) @ w_t`` with ``w_t = W.T`` of shape [K, N]."""
    reference._check_teal(x, w_t)
    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.teal_matvec(x, w_t, threshold)
    if b == "triton":
        return _triton().teal_matvec(x, w_t, float(threshold))
    _check_cuda_args(b, x, w_t, "w_t")
    return torch.ops.sparsekit.teal_matvec(x, w_t, float(threshold))


def teal_matvec_rel(x: torch.Tensor, w_t: torch.Tensor, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask_relative(x, threshold) @ w_t``: keep x where |x| > threshold * the token's mean |x|.
    One fused kernel on CUDA; elsewhere the mask in torch, then ``teal_matvec`` with threshold 0."""
    reference._check_teal(x, w_t)
    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.teal_matvec_rel(x, w_t, threshold)
    if b == "cuda":
        _check_cuda_args(b, x, w_t, "w_t")
        return torch.ops.sparsekit.teal_matvec_rel(x, w_t, float(threshold))
    return teal_matvec(reference.mask_relative(x, threshold), w_t, 0.0, backend=b)


def teal_matvec_glu(gu: torch.Tensor, w_t: torch.Tensor, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask(silu(gate) * up, threshold) @ w_t`` from ``gu = [gate | up]`` (``[..., 2K]``, w_t ``[K, N]``).
    One fused kernel on CUDA; elsewhere the SwiGLU product in torch, then ``teal_matvec``."""
    reference._check_teal(gu, w_t, glu=True)
    b = _choose(_dev(gu), backend)
    if b == "reference":
        return reference.teal_matvec_glu(gu, w_t, threshold)
    if b == "cuda":
        _check_cuda_args(b, gu, w_t, "w_t")
        return torch.ops.sparsekit.teal_matvec_glu(gu, w_t, float(threshold))
    return teal_matvec(reference.silu_mul(gu), w_t, threshold, backend=b)


def teal_matvec_sel(xs, idx, nnz, w_t, *, backend: str | None = None) -> torch.Tensor:
    """The teal product from a ``select`` result (shared by the matrices reading one input)."""
    reference._check_teal(xs, w_t)
    b = _choose(_dev(xs), backend)
    if b == "reference":
        return reference.teal_matvec_sel(xs, idx, nnz, w_t)
    if b == "triton":
        return _triton().teal_matvec_sel(xs, idx, nnz, w_t)
    _check_cuda_args(b, xs, w_t, "w_t")
    return torch.ops.sparsekit.teal_matvec_sel(xs, idx, nnz, w_t)


def _spdp_args(x: torch.Tensor, packed: dict):
    from sparsekit.formats import spdp

    n, k, tile_rows = spdp.dims(packed)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {k} inputs")
    return packed["values"], packed["bitmap"], packed["offsets"], n, tile_rows


def _op_tile_rows(packed: dict, tile_rows: int) -> int:
    """The ``tile_rows`` argument of the compiled spdp ops: negative when ``packed["fixed"]`` (set by
    ``SparseLinear.packed`` from ``spdp.fixed_layout``) declares the fixed balanced layout, whose CUDA
    kernels find every value without reading offsets (the CPU kernel takes ``|tile_rows|``)."""
    return -tile_rows if packed.get("fixed", False) else tile_rows


def spdp_matvec(x: torch.Tensor, packed: dict, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask(x, threshold) @ W.T`` with W in the spdp format."""
    values, bitmap, offsets, n, tile_rows = _spdp_args(x, packed)
    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.spdp_matvec(x, packed, threshold)
    if b == "triton":
        return _triton().spdp_matvec(x, values, bitmap, offsets, n, tile_rows, float(threshold))
    _check_cuda_args(b, x, values, "the packed values")
    return torch.ops.sparsekit.spdp_matvec(x, values, bitmap, offsets, n, _op_tile_rows(packed, tile_rows),
                                           float(threshold))


def spdp_values_aligned(packed: dict) -> bool:
    """Whether the spdp values start 16-byte aligned and contiguous (the tensor-core kernel copies them
    in 16-byte pieces)."""
    values = packed["values"]
    return values.is_contiguous() and values.data_ptr() % 16 == 0


def spdp_tensor_cores(x: torch.Tensor, packed: dict, *, backend: str | None = None,
                      aligned: bool | None = None) -> bool:
    """Whether ``spdp_matvec(x, packed, t)`` with several tokens runs on the CUDA tensor-core kernel
    (``csrc/cuda/spdp_mm.cuh``): the CUDA backend, fp16/bf16 values of x's dtype, K % 8 == 0 and the
    values 16-byte aligned (``aligned``: that fact when the caller has it cached, so compiled code
    never reads a data pointer). It reads the packed weight once per 64 tokens, so a prefill or a
    decode batch costs about one pass over it; elsewhere many tokens re-read it token by token."""
    values = packed["values"]
    if x.dtype not in (torch.float16, torch.bfloat16) or values.dtype != x.dtype or x.shape[-1] % 8 != 0:
        return False
    if _choose(_dev(x), backend) != "cuda" or values.device != x.device:
        return False
    return spdp_values_aligned(packed) if aligned is None else aligned


def spdp_matvec_rel(x: torch.Tensor, packed: dict, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask_relative(x, threshold) @ W.T`` with W in the spdp format (fused on CUDA, composed elsewhere)."""
    values, bitmap, offsets, n, tile_rows = _spdp_args(x, packed)
    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.spdp_matvec_rel(x, packed, threshold)
    if b == "cuda":
        _check_cuda_args(b, x, values, "the packed values")
        return torch.ops.sparsekit.spdp_matvec_rel(x, values, bitmap, offsets, n, _op_tile_rows(packed, tile_rows),
                                                   float(threshold))
    return spdp_matvec(reference.mask_relative(x, threshold), packed, 0.0, backend=b)


def spdp_matvec_glu(gu: torch.Tensor, packed: dict, threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """``mask(silu(gate) * up, threshold) @ W.T`` from ``gu = [gate | up]``, W in the spdp format (fused on
    CUDA, composed elsewhere)."""
    values, bitmap, offsets, n, tile_rows = _spdp_args(reference.glu_halves(gu)[0], packed)
    b = _choose(_dev(gu), backend)
    if b == "reference":
        return reference.spdp_matvec_glu(gu, packed, threshold)
    if b == "cuda":
        _check_cuda_args(b, gu, values, "the packed values")
        return torch.ops.sparsekit.spdp_matvec_glu(gu, values, bitmap, offsets, n, _op_tile_rows(packed, tile_rows),
                                                   float(threshold))
    return spdp_matvec(reference.silu_mul(gu), packed, threshold, backend=b)


def spdp_matvec_sel(xs, idx, nnz, packed: dict, *, backend: str | None = None) -> torch.Tensor:
    """The spdp product from a ``select`` result."""
    values, bitmap, offsets, n, tile_rows = _spdp_args(xs, packed)
    b = _choose(_dev(xs), backend)
    if b == "reference":
        return reference.spdp_matvec_sel(xs, idx, nnz, packed)
    if b == "triton":
        return _triton().spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n, tile_rows)
    _check_cuda_args(b, xs, values, "the packed values")
    return torch.ops.sparsekit.spdp_matvec_sel(xs, idx, nnz, values, bitmap, offsets, n,
                                               _op_tile_rows(packed, tile_rows))


def spdp_decode(packed: dict, *, backend: str | None = None) -> torch.Tensor:
    """The dense ``[N, K]`` weight of an spdp-packed one, bit for bit: the prefill path (decode
    once, then one dense matmul for all tokens)."""
    from sparsekit.formats import spdp

    values = packed["values"]
    b = _choose(_dev(values), backend)
    if b == "reference":
        return reference.spdp_decode(packed)
    n, k, tile_rows = spdp.dims(packed)
    if b == "triton":
        return _triton().spdp_decode(values, packed["bitmap"], packed["offsets"], n, k, tile_rows)
    return torch.ops.sparsekit.spdp_decode(values, packed["bitmap"], packed["offsets"], n, k, tile_rows)


def spinfer_matmul(x: torch.Tensor, packed: dict, *, backend: str | None = None) -> torch.Tensor:
    """``x @ W.T`` with W in the spinfer (TCA-BME) format."""
    from sparsekit.formats import spinfer

    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.spinfer_matmul(x, packed)
    n, k = spinfer.dims(packed)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {k} inputs")
    args = (packed["values"], packed["bitmaps"], packed["tile_offsets"], packed["group_offsets"], n, k)
    if b == "triton":
        return _triton().spinfer_matmul(x, *args)
    return torch.ops.sparsekit.spinfer_matmul(x, *args)


def rowdelta_matvec(x: torch.Tensor, packed: dict, *, backend: str | None = None) -> torch.Tensor:
    """``x @ W.T`` with W in the rowdelta layout (``sparsekit.formats.rowdelta``): the one-token path
    for unstructured weights. Reads the weight once per token; values and x share a dtype."""
    from sparsekit.formats import rowdelta

    b = _choose(_dev(x), backend)
    if b == "reference":
        return reference.rowdelta_matvec(x, packed)
    n, k = rowdelta.dims(packed)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} channels but the weight has {k} inputs")
    values = packed["values"]
    if x.dtype != values.dtype:
        raise ValueError(f"x is {x.dtype} but the weight's values are {values.dtype}")
    args = (values, packed["deltas"], packed["row_offsets"], n, k)
    if b == "triton":
        return _triton().rowdelta_matvec(x, *args)
    return torch.ops.sparsekit.rowdelta_matvec(x, *args)


# ---------------------------------------------------------------------------------------- fakes
def _out(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


def _register_fakes() -> None:
    reg = torch.library.register_fake

    @reg("sparsekit::select")
    def _select(x, threshold):
        k = x.shape[-1]
        return torch.empty_like(x), x.new_empty((k,), dtype=torch.int32), x.new_empty((1,), dtype=torch.int32)

    @reg("sparsekit::teal_matvec")
    def _teal(x, w_t, threshold):
        return _out(x, w_t.shape[1])

    @reg("sparsekit::teal_matvec_rel")
    def _teal_rel(x, w_t, threshold):
        return _out(x, w_t.shape[1])

    @reg("sparsekit::spdp_matvec_rel")
    def _spdp_rel(x, values, bitmap, offsets, n, tile_rows, threshold):
        return _out(x, n)

    @reg("sparsekit::teal_matvec_glu")
    def _teal_glu(gu, w_t, threshold):
        return _out(gu, w_t.shape[1])

    @reg("sparsekit::spdp_matvec_glu")
    def _spdp_glu(gu, values, bitmap, offsets, n, tile_rows, threshold):
        return _out(gu, n)

    @reg("sparsekit::teal_matvec_sel")
    def _teal_sel(xs, idx, nnz, w_t):
        return _out(xs, w_t.shape[1])

    @reg("sparsekit::spdp_matvec")
    def _spdp(x, values, bitmap, offsets, n, tile_rows, threshold):
        return _out(x, n)

    @reg("sparsekit::spdp_matvec_sel")
    def _spdp_sel(xs, idx, nnz, values, bitmap, offsets, n, tile_rows):
        return _out(xs, n)

    @reg("sparsekit::spdp_decode")
    def _spdp_decode(values, bitmap, offsets, n, k, tile_rows):
        return values.new_empty((n, k))

    @reg("sparsekit::spinfer_matmul")
    def _spinfer(x, values, bitmaps, tile_offsets, group_offsets, n, k):
        return _out(x, n)

    @reg("sparsekit::rowdelta_matvec")
    def _rowdelta(x, values, deltas, row_offsets, n, k):
        return _out(x, n)


if _C is not None:
    _register_fakes()
