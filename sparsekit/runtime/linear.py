"""``SparseLinear``: one linear layer = a weight format x an activation selector (DESIGN.md section 3).

The stored tensors are buffers named exactly like the saved tensors (``<linear>.<key>``, keys from
the format module, plus ``<linear>.threshold`` when the layer has an activation threshold,
``<linear>.threshold_relative`` (a uint8 scalar 1) when that threshold is relative to the token's
mean |x| (``kernels.reference.mask_relative``: the calibrated default at the o_proj input), and
``<linear>.bias`` when the original linear had one), so ``from_pretrained`` fills them directly.
A relative teal or spdp layer decoding on CUDA (at most ``TEAL_KERNEL_MAX_TOKENS`` tokens, no
shared selection) runs ``ops.teal_matvec_rel`` / ``ops.spdp_matvec_rel``: the kernel computes each
token's mean |x| itself. Elsewhere a relative layer masks x in plain torch (compiled: one small
reduction kernel per call, ~3.5 us per layer and token on an H200) and runs the format's path below
on the masked x with threshold 0.

Forward, by format (``xs`` = x masked to ``|x| > threshold`` by ``ops.select``):

=========  ====================================  ==========================================
format     sparsified step (decode, or prefill    dense step (prefill by default, or no
           with ``set_prefill_sparsity(True)``)   threshold)
=========  ====================================  ==========================================
dense      ``F.linear(xs, W)``                    ``F.linear(x, W)``
teal       ``ops.teal_matvec[_sel]``              ``x @ w_t``
spdp       ``ops.spdp_matvec[_sel]``              ``ops.spdp_matvec(x, packed, 0.0)``
spinfer    ``ops.spinfer_matmul(xs, packed)``     ``ops.spinfer_matmul(x, packed)``
bitmask    ``F.linear(xs, decoded W)``            ``F.linear(x, decoded W)``
2:4        ``F.linear(xs, W24)``                  ``F.linear(x, W24)``
=========  ====================================  ==========================================

A spinfer layer on a GPU also holds its weight in the ``rowdelta`` layout (``formats/rowdelta.py``,
built on the device when the layer is finalized or moved; not saved): a call with one token runs
``ops.rowdelta_matvec`` on it, whose work is per non-zero where SpInfer's bitmaps cost work per
position. It costs about ``2.5 * nnz`` bytes of device memory more (with the spinfer copy, about
what the dense weight takes at 60 % sparsity); ``SPARSEKIT_SPINFER_ROWDELTA=0`` turns it off.

On a GPU, calls with many tokens change path: teal above ``TEAL_KERNEL_MAX_TOKENS`` tokens runs
``xs @ w_t`` (cuBLAS). spdp with several tokens runs the tensor-core kernel inside
``ops.spdp_matvec`` (fp16/bf16, ``ops.spdp_tensor_cores``) up to ``SPDP_MM_MAX_TOKENS`` tokens;
otherwise, from ``SPDP_DECODE_MIN_TOKENS`` tokens, ``F.linear(xs or x, ops.spdp_decode(packed))``
(decode once, one dense matmul). Both serve prefills and large decode batches.

``bitmask`` is an archival format without a kernel: it computes with a dense copy decoded once on
first use (kept out of the state dict). ``2:4`` does the same on the CPU; on CUDA in fp16/bf16 it
uses torch's semi-structured sparse tensor (cuSPARSELt/CUTLASS) built once from the decoded weight.
A decode step (one token per sequence) is always sparsified when a threshold is set.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from sparsekit.formats import rowdelta
from sparsekit.kernels.reference import mask_activations, mask_relative, silu_mul

FORMATS = ("dense", "teal", "spdp", "spinfer", "bitmask", "2:4")
_MODULES = {"dense": "dense", "teal": "teal", "spdp": "spdp", "spinfer": "spinfer", "bitmask": "bitmask", "2:4": "semi24"}
THRESHOLD_KEY = "threshold"
RELATIVE_KEY = "threshold_relative"

_PREFILL_SPARSITY = False
# On a GPU, calls with many tokens (prefill, large decode batches) leave the matvec kernels:
# spdp from this many tokens decodes the weight once and runs one dense matmul (the matvec kernel
# reads the packed weight once per token: a 32-token prefill took 9x dense); teal above this many
# tokens runs cuBLAS on the masked input (the union of active channels over 4 sequences at 50% is
# ~94% of them, and the multi-token kernel lost to cuBLAS from batch 4: benchmarks/NOTES.md).
SPDP_DECODE_MIN_TOKENS = 8
# ... unless the tensor-core spdp kernel applies (fp16/bf16 on the CUDA backend): up to this many
# tokens spdp_matvec runs it, reading the packed weight once per 64 tokens. Above it, decoding once
# costs less (H200, a fused 7B layer: 352 against 450 us at 64 tokens, 2x slower at 128:
# benchmarks/NOTES.md, eleventh session).
SPDP_MM_MAX_TOKENS = 64
# ... and from this many tokens it runs there (kSpdpMmMinTokens in csrc/cuda/ops_cuda.h), so a decode
# batch of 4 leaves the fused SwiGLU one-token kernel for silu_mul + the tensor-core kernel.
SPDP_MM_MIN_TOKENS = 4
TEAL_KERNEL_MAX_TOKENS = 3
# spinfer layers on a GPU keep a rowdelta copy for one-token calls (SPARSEKIT_SPINFER_ROWDELTA=0: off)
SPINFER_ROWDELTA = os.environ.get("SPARSEKIT_SPINFER_ROWDELTA", "1") != "0"


def set_prefill_sparsity(on: bool) -> None:
    """Sparsify activations in prefill too (off by default: DESIGN section 7)."""
    global _PREFILL_SPARSITY
    _PREFILL_SPARSITY = bool(on)


def prefill_sparsity() -> bool:
    return _PREFILL_SPARSITY


def format_module(fmt: str):
    """The ``sparsekit.formats`` module of a format name (``encode``/``decode``/``KEYS``)."""
    if fmt not in _MODULES:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"sparsekit.formats.{_MODULES[fmt]}")


def float_keys(fmt: str) -> tuple[str, ...]:
    """The keys of a format that hold weight values (the rest is integer metadata)."""
    return {"dense": ("weight",), "teal": ("w_t",), "spdp": ("values",), "spinfer": ("values",),
            "bitmask": ("compressed",), "2:4": ("values",)}[fmt]


def _ops():
    import sparsekit.ops as ops

    return ops


class SharedCall:
    """``fn(x)`` computed once per input and handed to the ``members`` callers that read the same
    input (q/k/v; gate/up). The first caller to see a new ``x`` computes it; the cached result is
    dropped once every member has had it, so no activation outlives its forward. Traces under
    ``torch.compile`` (the identity check is resolved at trace time)."""

    def __init__(self, fn, members: int):
        self.fn = fn
        self.members = int(members)
        self._x = None
        self._out = None
        self._uses = 0

    def __call__(self, x: torch.Tensor):
        if self._x is not x:
            self._out = self.fn(x)
            self._x = x
            self._uses = 0
        out = self._out
        self._uses += 1
        if self._uses >= self.members:
            self._x = self._out = None
        return out


class SharedSelection(SharedCall):
    """One ``ops.select`` per input site, shared by the linears that read the same input."""

    def __init__(self, threshold: float, members: int):
        self.threshold = float(threshold)
        super().__init__(lambda x: _ops().select(x, self.threshold), members)


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A frozen ``nn.Linear`` holding ``weight`` ([out, in]) and ``bias``, on their device and dtype."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(False)


class SparseLinear(nn.Module):
    """A decoder linear stored in one weight format, with an optional activation threshold."""

    def __init__(self, fmt: str, in_features: int, out_features: int, *, bias: bool = False,
                 specs: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
                 threshold: bool = False, relative: bool = False, device=None, dtype=None):
        super().__init__()
        format_module(fmt)  # validates the name
        self.fmt = fmt
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.keys = tuple(specs or ())
        for key, (shape, kdtype) in (specs or {}).items():
            self.register_buffer(key, torch.empty(shape, dtype=kdtype, device=device))
        if threshold:
            self.register_buffer(THRESHOLD_KEY, torch.zeros((), dtype=torch.float32, device=device))
        else:
            self.threshold = None
        self.relative = bool(threshold and relative)  # the threshold is t * mean|x| of each token
        if self.relative:
            self.register_buffer(RELATIVE_KEY, torch.ones((), dtype=torch.uint8, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._t: float | None = None  # the threshold as a Python float (ops take floats; no device sync)
        self._dims: tuple[int, ...] | None = None  # the packed "shape" as ints (no device sync, traceable)
        self._ready = False
        self._aligned = False  # spdp values 16-byte aligned (finalize and device moves refresh it)
        self._fixed = False  # spdp weight in the fixed balanced layout (the same)
        self._dense_cache = None
        self._rowdelta: dict | None = None  # spinfer on a GPU: the one-token layout (built by _cache_layout)
        self._rowdelta_key = None
        self.shared: SharedSelection | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, threshold: float | None = None, relative: bool = False,
                    **encode_kwargs) -> "SparseLinear":
        """Pack ``linear.weight`` into ``fmt`` (kept on the linear's device and dtype)."""
        w = linear.weight.detach()
        packed = format_module(fmt).encode(w, **encode_kwargs)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_packed(fmt, packed, linear.in_features, linear.out_features, threshold, bias, relative)

    @classmethod
    def from_packed(cls, fmt: str, packed: dict[str, torch.Tensor], in_features: int, out_features: int,
                    threshold: float | None = None, bias: torch.Tensor | None = None,
                    relative: bool = False) -> "SparseLinear":
        """A layer holding already-packed tensors (copied), on the device and dtype of their values."""
        values = packed[float_keys(fmt)[0]]
        specs = {k: (tuple(v.shape), v.dtype) for k, v in packed.items()}
        new = cls(fmt, in_features, out_features, bias=bias is not None, specs=specs,
                  threshold=threshold is not None, relative=relative, device=values.device, dtype=values.dtype)
        with torch.no_grad():
            for k, v in packed.items():
                getattr(new, k).copy_(v)
            if threshold is not None:
                new.threshold.fill_(float(threshold))
            if bias is not None:
                new.bias.copy_(bias)
        new.finalize()
        return new

    def finalize(self) -> None:
        """Cache what forward needs as Python values (called after the buffers are filled)."""
        self._t = None if self.threshold is None else float(self.threshold)
        if "shape" in self.keys:
            self._dims = tuple(int(v) for v in self.shape.detach().cpu().tolist())
        self._dense_cache = None
        self._rowdelta = None  # the buffers may have been refilled in place: rebuild from them
        self._ready = True
        self._cache_layout()

    def _cache_layout(self) -> None:
        # read here, eagerly: a data pointer read inside a compiled forward breaks the graph
        self._aligned = self.fmt == "spdp" and _ops().spdp_values_aligned({"values": self.values})
        # the fixed balanced layout (formats/spdp.py): checked once here, declared to the ops by packed()
        self._fixed = self.fmt == "spdp" and format_module("spdp").fixed_layout(self.packed())
        self._build_rowdelta()

    def _build_rowdelta(self) -> None:
        """spinfer on a GPU: (re)build the rowdelta copy when the values moved, else drop it."""
        if self.fmt != "spinfer" or not SPINFER_ROWDELTA or not self.values.is_cuda:
            self._rowdelta = self._rowdelta_key = None
            return
        key = (self.values.data_ptr(), self.values.device, self.values.dtype)
        if self._rowdelta is None or self._rowdelta_key != key:
            with torch.no_grad():
                rd = rowdelta.encode(self.dense_weight())
            rd["shape"] = tuple(int(v) for v in rd["shape"].tolist())
            self._rowdelta, self._rowdelta_key = rd, key

    # -- views ---------------------------------------------------------------------------------
    @property
    def threshold_value(self) -> float | None:
        if not self._ready:
            self.finalize()
        return self._t

    def packed(self) -> dict[str, torch.Tensor]:
        """The format's tensors (``shape`` as a tuple of ints, so kernels and ``torch.compile`` read
        it without a device sync or a data-dependent guard)."""
        if not self._ready:
            self.finalize()
        d = {k: getattr(self, k) for k in self.keys}
        if self._dims is not None:
            d["shape"] = self._dims
        if self._fixed:
            d["fixed"] = True
        return d

    def dense_weight(self) -> torch.Tensor:
        """The weight decoded to ``[out, in]`` (exactly the packed weight)."""
        return format_module(self.fmt).decode(self.packed())

    def weight_bytes(self) -> int:
        """Bytes of the stored weight: the format's tensors, metadata included (not bias/threshold)."""
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in self.keys)

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * getattr(self, self.value_key).element_size()

    @property
    def value_key(self) -> str:
        return float_keys(self.fmt)[0]

    def weight_sparsity(self) -> float:
        """Fraction of zero weights (from the packed metadata where the format has it)."""
        return 1.0 - self.nonzeros() / max(1, self.in_features * self.out_features)

    def nonzeros(self) -> int:
        return int((getattr(self, self.value_key) != 0).sum())

    def bytes_read(self, activation_sparsity: float = 0.0) -> int:
        """Weight bytes one decode token reads: formats that skip inactive input channels (teal,
        spdp) read ``(1 - s2)`` of theirs when the layer has a threshold; the others read all."""
        s2 = activation_sparsity if self.threshold_value is not None else 0.0
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        if self.fmt in ("teal", "spdp"):
            return int(round((1.0 - s2) * self.weight_bytes())) + bias
        if self.fmt == "bitmask":
            return self.dense_bytes() + bias  # computed from a decoded dense copy
        if self.fmt == "2:4" and not self._semi_structured_ok(self.values):
            return self.dense_bytes() + bias
        if self._rowdelta is not None:  # a decode token reads the rowdelta copy
            return rowdelta.nbytes(self._rowdelta) + bias
        return self.weight_bytes() + bias

    def extra_repr(self) -> str:
        t = self.threshold_value
        shown = "none" if t is None else f"{t:.4g}" + (" x mean|x|" if self.relative else "")
        return (f"format={self.fmt}, in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, threshold={shown}")

    # -- forward -------------------------------------------------------------------------------
    def _sparsify(self, x: torch.Tensor) -> bool:
        if self._t is None:
            return False
        tokens_per_sequence = x.shape[-2] if x.dim() >= 2 else 1
        return tokens_per_sequence == 1 or _PREFILL_SPARSITY

    def _select(self, x: torch.Tensor, t: float):
        if self.shared is not None:
            return self.shared(x)
        return _ops().select(x, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            self.finalize()
        sparse = self._sparsify(x)
        t = self._t
        fmt = self.fmt
        tokens = x.numel() // max(1, self.in_features)
        # a relative threshold: inside the teal/spdp CUDA kernel when it decodes a few tokens on its own
        # selection, else masked here (the kernels below then see zeros and threshold 0)
        rel_kernel = (sparse and self.relative and x.is_cuda and fmt in ("teal", "spdp")
                      and tokens <= TEAL_KERNEL_MAX_TOKENS and self.shared is None)
        if sparse and self.relative and not rel_kernel:
            x, t = mask_relative(x, t), 0.0
        if fmt == "teal":
            if not sparse:
                y = torch.matmul(x, self.w_t)
            elif rel_kernel:
                y = _ops().teal_matvec_rel(x, self.w_t, t)
            elif x.is_cuda and tokens > TEAL_KERNEL_MAX_TOKENS:  # the union of active channels is most of them
                y = torch.matmul(mask_activations(x, t), self.w_t)  # plain torch: compiled into x's producer
            elif self.shared is not None:
                y = _ops().teal_matvec_sel(*self.shared(x), self.w_t)
            else:
                y = _ops().teal_matvec(x, self.w_t, t)
        elif fmt == "spdp":
            if x.is_cuda and tokens >= SPDP_DECODE_MIN_TOKENS and not self._spdp_tensor_cores(x, tokens):
                y = F.linear(mask_activations(x, t) if sparse else x, _ops().spdp_decode(self.packed()))
            elif not sparse:
                y = _ops().spdp_matvec(x, self.packed(), 0.0)
            elif rel_kernel:
                y = _ops().spdp_matvec_rel(x, self.packed(), t)
            elif self.shared is not None:
                y = _ops().spdp_matvec_sel(*self.shared(x), self.packed())
            else:
                y = _ops().spdp_matvec(x, self.packed(), t)
        else:
            xs = self._select(x, t)[0] if sparse else x
            if fmt == "spinfer":
                if self._rowdelta is not None and tokens == 1 and xs.is_cuda and xs.dtype == self.values.dtype:
                    y = _ops().rowdelta_matvec(xs, self._rowdelta)
                else:
                    y = _ops().spinfer_matmul(xs, self.packed())
            elif fmt == "dense":
                return F.linear(xs, self.weight, self.bias)
            else:
                return self._linear_cached(xs)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _spdp_tensor_cores(self, x: torch.Tensor, tokens: int) -> bool:
        """Many tokens on a GPU: the tensor-core spdp kernel reads the packed weight once per 64 tokens
        (``ops.spdp_tensor_cores``); above ``SPDP_MM_MAX_TOKENS`` decoding once plus cuBLAS costs less."""
        return tokens <= SPDP_MM_MAX_TOKENS and _ops().spdp_tensor_cores(x, self.packed(), aligned=self._aligned)

    def _glu_threshold(self, gu: torch.Tensor) -> float | None:
        """The threshold for ``ops.*_glu`` when ``forward(silu_mul(gu))`` would run this layer's plain
        fused-threshold op (``teal_matvec`` / ``spdp_matvec``) on its one-token kernels, else None (also
        when spdp's plain op would run the tensor-core kernel, which the fused op does not)."""
        if self.fmt not in ("teal", "spdp") or self.relative or self.shared is not None:
            return None
        tokens = gu.numel() // max(1, 2 * self.in_features)
        sparse = self._sparsify(gu)
        if self.fmt == "teal":
            return self._t if sparse and not (gu.is_cuda and tokens > TEAL_KERNEL_MAX_TOKENS) else None
        if gu.is_cuda and tokens >= SPDP_DECODE_MIN_TOKENS:  # forward() picks the path for many tokens
            return None
        if (gu.is_cuda and tokens >= SPDP_MM_MIN_TOKENS and sparse
                and self._spdp_tensor_cores(gu[..., :self.in_features], tokens)):
            return None  # the tensor-core kernel (plain op only) beats the fused one-token kernels here
        return self._t if sparse else 0.0

    def forward_glu(self, gu: torch.Tensor) -> torch.Tensor:
        """``self(silu_mul(gu))`` from a Llama MLP's stacked gate/up output ``gu`` (``[..., 2 * in_features]``).
        Where this layer would run its plain masked matvec, the SwiGLU product is computed inside that
        kernel (``ops.teal_matvec_glu`` / ``ops.spdp_matvec_glu``: one launch fewer per decode step)."""
        if not self._ready:
            self.finalize()
        t = self._glu_threshold(gu)
        if t is None:
            return self(silu_mul(gu))
        if self.fmt == "teal":
            y = _ops().teal_matvec_glu(gu, self.w_t, t)
        else:
            y = _ops().spdp_matvec_glu(gu, self.packed(), t)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _linear_cached(self, x: torch.Tensor) -> torch.Tensor:
        w = self._compute_weight()
        if isinstance(w, torch.Tensor) and type(w) is not torch.Tensor:  # torch's 2:4 sparse tensor
            x2 = x.reshape(-1, self.in_features).contiguous()
            try:
                y = F.linear(x2, w, self.bias)
                return y.reshape(*x.shape[:-1], self.out_features)
            except (NotImplementedError, RuntimeError) as exc:
                warnings.warn(f"torch's 2:4 kernel failed ({str(exc).splitlines()[0]}); this layer now computes with its dense weight.")
                ref = getattr(self, self.value_key)
                self._dense_cache = ((ref.device, ref.dtype), self.dense_weight())
                w = self._dense_cache[1]
        return F.linear(x, w, self.bias)

    def _semi_structured_ok(self, w: torch.Tensor) -> bool:
        return (w.is_cuda and w.dtype in (torch.float16, torch.bfloat16)
                and self.out_features % 64 == 0 and self.in_features % 64 == 0)

    def _compute_weight(self) -> torch.Tensor:
        """bitmask / 2:4: the dense weight (or torch's 2:4 sparse tensor on CUDA), built once per device."""
        ref = getattr(self, self.value_key)
        cache = self._dense_cache
        if cache is None or cache[0] != (ref.device, ref.dtype):
            w = self.dense_weight()
            if self.fmt == "2:4" and self._semi_structured_ok(w):
                try:
                    from torch.sparse import to_sparse_semi_structured

                    w = to_sparse_semi_structured(w)
                except (RuntimeError, ValueError):  # no cuSPARSELt/CUTLASS kernel for this GPU
                    pass
            cache = self._dense_cache = ((ref.device, ref.dtype), w)
        return cache[1]

    def _apply(self, fn, recurse=True):
        self._dense_cache = None  # device/dtype moves rebuild it from the packed tensors
        out = super()._apply(fn, recurse)
        if self._ready:
            self._cache_layout()
        return out
