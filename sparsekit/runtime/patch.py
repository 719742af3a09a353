"""Swap the decoder-layer ``nn.Linear`` modules of an HF model for ``SparseLinear`` (in place).

Used by ``sparsekit convert`` (pack, then save), by the HfQuantizer (empty modules on the meta
device before the weights load) and by ``bench`` (synthetic models in memory).
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from sparsekit.models import ROLES, SITES, decoder_layers, linear_refs
from sparsekit.runtime.linear import FORMATS, SharedSelection, SparseLinear


def ignored(name: str, patterns) -> bool:
    """True when the linear ``name`` matches one of the glob ``patterns`` (or equals one)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns or ())


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def convert_model(model: nn.Module, fmt: str, thresholds: dict[str, float] | None = None, ignore=(),
                  progress=None, **encode_kwargs) -> dict:
    """Replace every decoder linear (except those matching ``ignore``) by a ``SparseLinear`` in
    ``fmt`` with its threshold (None: no activation sparsity; the names in ``thresholds.relative``,
    a ``Thresholds``, get the relative rule). Frees each dense weight as it goes.

    Returns a report: ``format``, ``per_linear`` (name -> sparsity, bytes, dense_bytes, threshold),
    ``ignored`` (names left as nn.Linear), ``bytes``, ``dense_bytes``, ``weight_sparsity``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from sparsekit.activation.sparsify import relative_names

    relative = relative_names(thresholds)
    thresholds = dict(thresholds or {})
    refs = linear_refs(model)
    per_linear, skipped = {}, []
    for i, ref in enumerate(refs):
        if ignored(ref.name, ignore):
            skipped.append(ref.name)
            continue
        lin = ref.module
        if isinstance(lin, SparseLinear):
            raise ValueError(f"{ref.name} is already a SparseLinear; convert a model only once")
        t = thresholds.get(ref.name)
        sparse = SparseLinear.from_linear(lin, fmt, t, ref.name in relative, **encode_kwargs)
        _set_submodule(model, ref.name, sparse)
        per_linear[ref.name] = {
            "sparsity": sparse.weight_sparsity(),
            "bytes": sparse.weight_bytes(),
            "dense_bytes": sparse.dense_bytes(),
            "threshold": t,
            "relative": sparse.relative,
        }
        del lin
        if progress is not None:
            progress(i + 1, len(refs))
    link_shared_selections(model)
    nbytes = sum(v["bytes"] for v in per_linear.values())
    dense = sum(v["dense_bytes"] for v in per_linear.values())
    zeros = sum(v["sparsity"] * v["dense_bytes"] for v in per_linear.values())
    return {
        "format": fmt,
        "per_linear": per_linear,
        "ignored": skipped,
        "bytes": nbytes,
        "dense_bytes": dense,
        "weight_sparsity": zeros / dense if dense else 0.0,
    }


def link_shared_selections(model: nn.Module) -> int:
    """Let the linears of one input site (q/k/v; gate/up) share one ``ops.select`` per forward
    when all of them are SparseLinear with the same absolute threshold. Returns the number of shared sites."""
    count = 0
    for layer in decoder_layers(model):
        for roles in SITES.values():
            mods = [layer.get_submodule(ROLES[r]) for r in roles]
            for m in mods:
                if isinstance(m, SparseLinear):
                    m.shared = None
            if len(mods) < 2 or not all(isinstance(m, SparseLinear) for m in mods):
                continue
            ts = {m.threshold_value for m in mods}
            if len(ts) != 1 or None in ts or any(m.relative for m in mods):
                continue
            shared = SharedSelection(ts.pop(), len(mods))
            for m in mods:
                m.shared = shared
            count += 1
    return count


def sparse_linears(model: nn.Module) -> dict[str, SparseLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def build_empty(model: nn.Module, fmt: str, tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> list[str]:
    """For loading: replace each decoder linear that has packed tensors in ``tensors`` (name ->
    (shape, dtype), e.g. from the safetensors headers) by an empty SparseLinear on the meta
    device whose buffers have exactly those names, shapes and dtypes (weight values in the
    linear's own dtype, which the loader casts to). Returns the names replaced."""
    from sparsekit.runtime.linear import RELATIVE_KEY, THRESHOLD_KEY, float_keys, format_module

    keys = format_module(fmt).KEYS
    floats = float_keys(fmt)
    done = []
    for ref in linear_refs(model):
        if f"{ref.name}.{keys[0]}" not in tensors:
            continue
        lin = ref.module
        dtype = lin.weight.dtype
        specs = {}
        for k in keys:
            spec = tensors.get(f"{ref.name}.{k}")
            if spec is None:
                raise KeyError(f"{ref.name}.{k}")
            shape, kdtype = spec
            specs[k] = (tuple(shape), dtype if k in floats else kdtype)
        with torch.device("meta"):
            sparse = SparseLinear(fmt, lin.in_features, lin.out_features, bias=lin.bias is not None, specs=specs,
                                  threshold=f"{ref.name}.{THRESHOLD_KEY}" in tensors,
                                  relative=f"{ref.name}.{RELATIVE_KEY}" in tensors, device="meta", dtype=dtype)
        _set_submodule(model, ref.name, sparse)
        done.append(ref.name)
    return done


def finalize(model: nn.Module) -> None:
    """After the buffers are filled: cache thresholds and shapes, link the shared selections."""
    for m in sparse_linears(model).values():
        m.finalize()
    link_shared_selections(model)


def _site_sparsity(activation_sparsity, name: str) -> float:
    if activation_sparsity is None:
        return 0.0
    if isinstance(activation_sparsity, (int, float)):
        return float(activation_sparsity)
    if name in activation_sparsity:
        return float(activation_sparsity[name])
    from sparsekit.models import SITE_OF_ROLE

    role = next((r for r, p in ROLES.items() if name.endswith(p)), None)
    return float(activation_sparsity.get(SITE_OF_ROLE.get(role, ""), 0.0))


def bytes_per_token(model: nn.Module, activation_sparsity: float | dict | None = None) -> int:
    """Bytes of weights one decode token reads (KV cache not included): every SparseLinear's
    ``bytes_read`` (teal/spdp read ``1 - s2`` of their weights when the layer has a threshold),
    every other parameter and buffer in full (norms, dense linears, lm_head), and one row of
    each embedding table. ``activation_sparsity``: one s2 for all sites, or a dict keyed by
    linear name or by site (``attn``, ``o``, ``mlp``, ``down``)."""
    total = 0
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            total += mod.bytes_read(_site_sparsity(activation_sparsity, name))
            for t in mod.parameters(recurse=False):
                seen.add(id(t))
            for t in mod.buffers(recurse=False):
                seen.add(id(t))
            continue
        tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        for t in tensors:
            if id(t) in seen or t.is_meta:
                continue
            seen.add(id(t))
            if isinstance(mod, nn.Embedding) and t is mod.weight:
                # a tied lm_head reads the whole table; an untied embedding reads one row
                tied = any(p is t for n, p in model.named_parameters(remove_duplicate=False) if n.startswith("lm_head"))
                total += t.numel() * t.element_size() if tied else t.shape[-1] * t.element_size()
            else:
                total += t.numel() * t.element_size()
    return int(total)
