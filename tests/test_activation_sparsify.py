"""Thresholds on a plain HF model (sparsekit/activation/sparsify.py)."""
from __future__ import annotations

import pytest
import torch

from sparsekit.activation.sparsify import apply_thresholds, floor_to, mask, measure_sparsity
from sparsekit.errors import BadInput
from sparsekit.models import linear_refs
from sparsekit.testing import tiny_model


def test_mask_keeps_strictly_greater_and_compares_exactly_in_low_precision():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    assert mask(x, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]
    assert torch.equal(mask(x, 0.0), x)
    # bf16 cannot hold 1.002; rounding it to nearest (1.0) or up would mis-mask. Floor keeps |x| > t exact.
    xb = torch.tensor([1.0, 1.0078125, 0.99609375], dtype=torch.bfloat16)
    assert floor_to(1.002, torch.bfloat16) == 1.0
    assert mask(xb, 1.002).tolist() == [0.0, 1.0078125, 0.0]
    assert floor_to(1.0, torch.bfloat16) == 1.0
    assert mask(xb, 1.0).tolist() == [0.0, 1.0078125, 0.0]


class _Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4, bias=False)
        self.seen = []
        self.lin.register_forward_pre_hook(lambda m, a: self.seen.append(a[0].clone()))  # before ours

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("prefill, first_masked", [("all", 0), ("later_half", 3), ("later-half", 3), ("none", None)])
def test_prefill_modes_and_decode_steps(prefill, first_masked):
    m = _Probe()
    got = []
    m.lin.register_forward_pre_hook(lambda mod, a: None)
    x = torch.full((1, 6, 4), 0.5)
    with apply_thresholds(m, {"lin": 1.0}, prefill=prefill):
        h = m.lin.register_forward_pre_hook(lambda mod, a: got.append(a[0].clone()))
        m(x)
        m(torch.full((1, 1, 4), 0.5))  # a decode step: always sparsified
        h.remove()
    full, step = got
    if first_masked is None:
        assert torch.equal(full, x)
    else:
        assert torch.equal(full[:, :first_masked], x[:, :first_masked])
        assert (full[:, first_masked:] == 0).all()
    assert (step == 0).all()
    got.clear()
    m(x)  # hooks removed
    assert torch.equal(m.seen[-1], x)


def test_bad_prefill_and_unknown_linear_are_bad_input():
    m = tiny_model()
    with pytest.raises(BadInput, match="prefill"):
        apply_thresholds(m, {}, prefill="first")
    with pytest.raises(BadInput, match="different model"):
        apply_thresholds(m, {"model.layers.9.mlp.up_proj": 0.1})


def test_measure_sparsity_counts_masked_inputs_per_linear():
    m = tiny_model()
    names = [r.name for r in linear_refs(m)]
    tokens = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(0))
    zero = measure_sparsity(m, {n: 0.0 for n in names}, tokens, seqlen=64)
    assert set(zero) == set(names) and max(zero.values()) == 0.0
    big = measure_sparsity(m, {n: 1e9 for n in names}, tokens, seqlen=64)
    assert min(big.values()) == 1.0


def test_generate_sparsifies_decode_steps_even_with_dense_prefill():
    m = tiny_model()
    prompt = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    name = "model.layers.0.mlp.down_proj"
    sizes = []
    m.get_submodule(name).register_forward_pre_hook(lambda mod, a: sizes.append(a[0].shape[-2]))
    with apply_thresholds(m, {name: 1e9}, prefill="none", count=True) as handle:
        out = m.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=True)
        frac = handle.achieved()[name]
    assert out.shape[1] == 16
    assert sizes[0] == 12 and all(s == 1 for s in sizes[1:])  # prefill, then one token per decode step
    assert frac == 1.0  # only the decode steps were subject to masking, and they were fully masked
    dense = m.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=True)
    assert torch.equal(out[:, :13], dense[:, :13])  # first new token comes from the dense prefill
