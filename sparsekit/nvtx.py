"""Named ranges around tokens, decoder layers, attention, the activation selection, every matmul
and the rest — as NVTX ranges (for Nsight Systems) and ``torch.profiler.record_function`` scopes
(for torch.profiler) at once.

They are added by module hooks inside ``scopes(model)`` and removed on exit, so a model that is not
being profiled runs with no hook at all (zero cost when profiling is off).

Range names are ``sk:<category>:<detail>``; the categories are ``CATEGORIES`` plus the
containers ``token`` (one generated token), ``reftoken`` (an eager token used to attribute CUDA-graph
kernels) and ``layer``. ``category_of(name)`` maps a range (or a profiler op) name to its category.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

CATEGORIES = ("attention", "selection", "sparse_matmul", "dense_matmul", "norms_elementwise", "other")
CATEGORY_LABELS = {"attention": "attention", "selection": "selection", "sparse_matmul": "sparse matmul",
                   "dense_matmul": "dense matmul", "norms_elementwise": "norms and elementwise", "other": "other"}
PREFIX = "sk:"
# a decoder layer's own work outside its sub-modules is the residual adds
CONTAINER_CATEGORY = {"layer": "norms_elementwise"}


def category_of(name: str) -> str | None:
    """Category of a range name (``sk:...``) or of a profiler op name; None if it is neither."""
    if name.startswith(PREFIX):
        kind = name[len(PREFIX):].split(":", 1)[0]
        if kind in CATEGORIES:
            return kind
        return CONTAINER_CATEGORY.get(kind)
    if name.startswith("sparsekit::select"):
        return "selection"
    return None


def token_range(label: str, index: int) -> str:
    return f"{PREFIX}token:{label}:{index}"


def ref_token_range(label: str) -> str:
    return f"{PREFIX}reftoken:{label}"


def parse_token(name: str) -> tuple[str, str, int | None] | None:
    """``sk:token:LABEL:I`` -> ("token", LABEL, I); ``sk:reftoken:LABEL`` -> ("reftoken", LABEL, None)."""
    if name.startswith(PREFIX + "token:"):
        label, _, idx = name[len(PREFIX + "token:"):].rpartition(":")
        return ("token", label, int(idx)) if idx.isdigit() else None
    if name.startswith(PREFIX + "reftoken:"):
        return ("reftoken", name[len(PREFIX + "reftoken:"):], None)
    return None


# -------------------------------------------------------------------------------- NVTX backend
def _nvtx_backend():
    """(push, pop) from the ``nvtx`` package, else ``torch.cuda.nvtx``, else no-ops."""
    try:
        import nvtx

        return (lambda name: nvtx.push_range(name)), (lambda: nvtx.pop_range())
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    except (ImportError, RuntimeError):
        pass
    return (lambda name: None), (lambda: None)


class Ranges:
    """Push/pop a name as NVTX and/or record_function at once."""

    def __init__(self, nvtx: bool = True, record: bool = True):
        self._push, self._pop = _nvtx_backend() if nvtx else ((lambda n: None), (lambda: None))
        self.record = record
        self._stack: list = []

    def push(self, name: str) -> None:
        self._push(name)
        rf = None
        if self.record:
            import torch

            rf = torch.profiler.record_function(name)
            rf.__enter__()
        self._stack.append(rf)

    def pop(self) -> None:
        rf = self._stack.pop()
        if rf is not None:
            rf.__exit__(None, None, None)
        self._pop()

    @contextlib.contextmanager
    def range(self, name: str) -> Iterator[None]:
        self.push(name)
        try:
            yield
        finally:
            self.pop()


def module_scopes(model) -> list[tuple[object, str]]:
    """(module, range name) for every module that gets a range, outermost first."""
    from torch import nn

    from sparsekit.models import decoder_layers

    try:
        from sparsekit.runtime.linear import SparseLinear
    except ImportError:  # pragma: no cover - runtime not installed
        SparseLinear = ()  # type: ignore[assignment]

    out: list[tuple[object, str]] = []
    inner = getattr(model, "model", None)
    if inner is not None:
        if getattr(inner, "embed_tokens", None) is not None:
            out.append((inner.embed_tokens, f"{PREFIX}other:embed_tokens"))
        if getattr(inner, "rotary_emb", None) is not None:
            out.append((inner.rotary_emb, f"{PREFIX}attention:rotary_emb"))
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        out.append((layer, f"{PREFIX}layer:{i}"))
    for name, mod in model.named_modules():
        cls = type(mod).__name__
        if SparseLinear and isinstance(mod, SparseLinear):
            kind = "dense_matmul" if mod.fmt == "dense" else "sparse_matmul"
        elif isinstance(mod, nn.Linear):
            kind = "dense_matmul"
        elif cls.endswith(("RMSNorm", "LayerNorm")):
            kind = "norms_elementwise"
        elif name.endswith("self_attn"):
            kind = "attention"
        elif name.endswith(".mlp") or name.endswith("act_fn"):
            kind = "norms_elementwise"  # the MLP's own work: activation and gating product
        else:
            continue
        out.append((mod, f"{PREFIX}{kind}:{name}"))
    return out


@contextlib.contextmanager
def scopes(model, nvtx: bool = True, record: bool = True) -> Iterator[Ranges]:
    """Ranges around the model's parts while inside; hooks and patches are removed on exit.

    ``sparsekit.ops.select`` is wrapped in an ``sk:selection`` range too (SparseLinear reaches it
    through the module attribute), so the selection shows even with a pure-Python backend.
    """
    ranges = Ranges(nvtx=nvtx, record=record)
    handles = []
    for mod, name in module_scopes(model):
        handles.append(mod.register_forward_pre_hook(lambda _m, _a, n=name: ranges.push(n)))
        handles.append(mod.register_forward_hook(lambda _m, _a, _o: ranges.pop()))
    ops = None
    try:
        import sparsekit.ops as ops

        original_select = ops.select

        def select(*args, **kwargs):
            with ranges.range(f"{PREFIX}selection:select"):
                return original_select(*args, **kwargs)

        ops.select = select
    except ImportError:  # pragma: no cover
        ops = None
    try:
        yield ranges
    finally:
        for h in handles:
            h.remove()
        if ops is not None:
            ops.select = original_select
