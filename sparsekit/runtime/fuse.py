"""One launch per input site: q/k/v as one projection, gate/up as one (inference only).

The projections of one input site (DESIGN section 3: ``attn`` = q/k/v, ``mlp`` = gate/up) read the
same activation and, with one threshold per site, the same active channels. ``fuse_projections``
stacks their weights into one module (for ``teal`` the ``w_t`` columns, for ``dense`` the rows, for
the other formats the decoded rows re-encoded) so a decode step runs one kernel per site instead of
two or three. Each kernel call has a fixed cost of a few microseconds (launch, ramp, reduction; see
benchmarks/NOTES.md "CUDA kernels"), which one bigger call pays once.

The member modules (``q_proj`` ...) become ``ProjectionSlice`` views: the first one to see a new
input computes the stacked output, every member returns its columns, and the cached output is
dropped once all members have read it (``SharedCall``, the mechanism ``SharedSelection`` uses; it
traces under ``torch.compile``). Attention and MLP code of transformers stays untouched.

With the MLP's gate/up fused, a Llama-family MLP (``LlamaMLP`` and its Mistral/Qwen twins, SiLU
activation) whose ``down_proj`` is a teal or spdp ``SparseLinear`` also gets the SwiGLU product
fused into the down projection: its forward becomes ``down_proj.forward_glu(gate_up(x))``, so a
decode step skips the separate ``silu(gate) * up`` kernel (``ops.teal_matvec_glu``). Env
``SPARSEKIT_FUSE_GLU=0`` turns this off (an experiment knob).

Members fuse only when they are all ``nn.Linear`` or all ``SparseLinear`` of one format with one
threshold (greedy allocations give q/k/v different thresholds: those stay separate). A fused model
is for running, not for saving: ``unfuse_projections`` splits it back exactly.
"""
from __future__ import annotations

import os
import types

import torch
from torch import nn

from sparsekit.models import ROLES, SITES, decoder_layers
from sparsekit.runtime.linear import SharedCall, SparseLinear, dense_linear

FUSED_SITES = ("attn", "mlp")


class FusedProjection(nn.Module):
    """The stacked projection of one input site; members read their columns from ``output``."""

    def __init__(self, inner: nn.Module, sizes: list[int]):
        super().__init__()
        self.inner = inner
        self.sizes = [int(s) for s in sizes]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.output = SharedCall(inner, len(self.sizes))  # one launch per input, every member reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the whole stacked output
        return self.inner(x)


class ProjectionSlice(nn.Module):
    """Member ``index`` of a ``FusedProjection`` (registered as a submodule by member 0 only, so
    parameters and bytes are counted once)."""

    def __init__(self, group: FusedProjection, index: int):
        super().__init__()
        if index == 0:
            self.group = group
        else:
            self.__dict__["group"] = group  # a plain reference: not a second owner of the weights
        self.index = int(index)
        self.start = group.starts[index]
        self.stop = self.start + group.sizes[index]
        self.in_features = int(group.inner.in_features)
        self.out_features = group.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x)[..., self.start:self.stop]

    def extra_repr(self) -> str:
        return f"member {self.index} of {len(self.group.sizes)}, columns [{self.start}, {self.stop})"


def _encode_kwargs(m: SparseLinear) -> dict:
    if m.fmt == "spdp":
        return {"tile_rows": int(m._dims[2])}
    return {}


def _stack(mods: list[nn.Module]) -> nn.Module | None:
    """One module computing ``cat([m(x) for m in mods], -1)``, or None when they cannot fuse."""
    biases = [m.bias for m in mods]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    if all(type(m) is nn.Linear for m in mods):
        return dense_linear(torch.cat([m.weight.detach() for m in mods]), bias)
    if not all(isinstance(m, SparseLinear) for m in mods):
        return None
    fmts = {m.fmt for m in mods}
    ts = {(m.threshold_value, m.relative) for m in mods}
    if len(fmts) != 1 or len(ts) != 1:
        return None
    fmt, (t, rel) = fmts.pop(), ts.pop()
    first = mods[0]
    sizes = [m.out_features for m in mods]
    if fmt == "teal":  # w_t is [in, out]: stack columns
        w_t = torch.cat([m.w_t for m in mods], dim=1)
        return SparseLinear.from_packed("teal", {"w_t": w_t}, first.in_features, sum(sizes), t, bias, rel)
    kwargs = _encode_kwargs(first)
    if fmt == "spdp" and len({_encode_kwargs(m)["tile_rows"] for m in mods}) != 1:
        return None
    return SparseLinear.from_linear(dense_linear(torch.cat([m.dense_weight() for m in mods]), bias), fmt, t, rel,
                                    **kwargs)


GLU_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")  # forward: down(act(gate(x)) * up(x))


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _glu_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A fused MLP's forward: the stacked gate/up output straight into the down projection."""
    return mlp.down_proj.forward_glu(mlp.gate_proj.group.inner(x))


def _glu_patched(mlp: nn.Module | None) -> bool:
    """True when ``fuse_projections`` replaced this MLP's forward by ``_glu_forward``."""
    return mlp is not None and getattr(mlp.__dict__.get("forward"), "__func__", None) is _glu_forward


def glu_fusable(mlp: nn.Module) -> bool:
    """True when ``mlp`` computes ``down(silu(gate(x)) * up(x))`` with gate/up fused (in that order,
    equal widths) and a teal or spdp down projection."""
    if type(mlp).__name__ not in GLU_MLPS or not _is_silu(getattr(mlp, "act_fn", None)):
        return False
    gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    if not (isinstance(gate, ProjectionSlice) and isinstance(up, ProjectionSlice) and gate.group is up.group):
        return False
    if gate.group.sizes != [gate.out_features, up.out_features] or (gate.index, up.index) != (0, 1):
        return False
    return (isinstance(down, SparseLinear) and down.fmt in ("teal", "spdp")
            and down.in_features == gate.out_features == up.out_features)


def fuse_projections(model: nn.Module, sites=FUSED_SITES, glu: bool | None = None) -> int:
    """Fuse the projections of each input site in ``sites`` of every decoder layer (in place), and
    the SwiGLU product into the down projection where ``glu_fusable`` (``glu=None``: unless env
    ``SPARSEKIT_FUSE_GLU=0``). Returns the number of fused groups."""
    if glu is None:
        glu = os.environ.get("SPARSEKIT_FUSE_GLU", "1") != "0"
    count = 0
    for layer in decoder_layers(model):
        for site in sites:
            paths = [ROLES[r] for r in SITES[site]]
            mods = [layer.get_submodule(p) for p in paths]
            if len(mods) < 2 or any(isinstance(m, ProjectionSlice) for m in mods):
                continue
            inner = _stack(mods)
            if inner is None:
                continue
            group = FusedProjection(inner, [m.out_features for m in mods])
            for i, p in enumerate(paths):
                parent, _, child = p.rpartition(".")
                setattr(layer.get_submodule(parent), child, ProjectionSlice(group, i))
            del mods
            count += 1
        mlp = getattr(layer, "mlp", None)
        if glu and mlp is not None and not _glu_patched(mlp) and glu_fusable(mlp):
            mlp.forward = types.MethodType(_glu_forward, mlp)
    return count


def glu_fused(model: nn.Module) -> int:
    """The number of MLPs whose forward runs the fused SwiGLU down projection."""
    return sum(1 for layer in decoder_layers(model) if _glu_patched(getattr(layer, "mlp", None)))


def unfuse_projections(model: nn.Module) -> int:
    """Split every fused group back into its member modules (bit-exact weights). Returns the count."""
    count = 0
    for layer in decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if _glu_patched(mlp):
            del mlp.forward  # back to the class's forward
        for site in FUSED_SITES:
            paths = [ROLES[r] for r in SITES[site]]
            first = layer.get_submodule(paths[0])
            if not isinstance(first, ProjectionSlice):
                continue
            group = first.group
            inner = group.inner
            bias = None if inner.bias is None else inner.bias.detach()
            for i, p in enumerate(paths):
                a, b = group.starts[i], group.starts[i] + group.sizes[i]
                bi = None if bias is None else bias[a:b]
                if isinstance(inner, nn.Linear):
                    member = dense_linear(inner.weight.detach()[a:b], bi)
                elif inner.fmt == "teal":
                    member = SparseLinear.from_packed("teal", {"w_t": inner.w_t[:, a:b]}, inner.in_features, b - a,
                                                      inner.threshold_value, bi, inner.relative)
                else:
                    member = SparseLinear.from_linear(dense_linear(inner.dense_weight()[a:b], bi), inner.fmt,
                                                      inner.threshold_value, inner.relative, **_encode_kwargs(inner))
                parent, _, child = p.rpartition(".")
                setattr(layer.get_submodule(parent), child, member)
            count += 1
    from sparsekit.runtime.patch import link_shared_selections

    link_shared_selections(model)
    return count


def fused_groups(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, FusedProjection))
