"""Thresholds on a plain HF model (sparsekit/activation/sparsify.py)."""
from __future__ import annotations

import pytest
import torch

from sparsekit.activation.sparsify import Thresholds, apply_thresholds, floor_to, mask, measure_sparsity
from sparsekit.kernels.reference import mask_relative, relative_magnitude, token_scale
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_relative_rule_keeps_x_above_t_times_the_tokens_mean_abs(dtype):
    x = torch.tensor([[1.0, -2.0, 3.0, -6.0], [0.25, 0.5, -0.75, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    assert token_scale(x).flatten().tolist() == [3.0, 0.5, 0.0]
    # row 0: keep |x| > 0.9 * 3 = 2.7; row 1: |x| > 0.45; row 2: nothing (all zero)
    assert mask_relative(x, 0.9).float().tolist() == [[0, 0, 3, -6], [0, 0.5, -0.75, 0.5], [0, 0, 0, 0]]
    want = torch.tensor([[1 / 3, 2 / 3, 1, 2], [0.5, 1, 1.5, 1], [0, 0, 0, 0]])
    assert relative_magnitude(x).dtype == torch.float32
    assert torch.allclose(relative_magnitude(x), want, rtol=1e-6, atol=0)
    assert mask_relative(x, 0.0).dtype == dtype


def test_relative_rule_ignores_the_tokens_scale():
    """Scaling a token by any power of two changes nothing the relative rule keeps (the absolute one does)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 37, generator=gen)
    scaled = x * (2.0 ** torch.arange(-3, 3).float())[:, None]
    assert torch.equal(mask_relative(scaled, 0.8) != 0, mask_relative(x, 0.8) != 0)
    assert not torch.equal(mask(scaled, 0.8) != 0, mask(x, 0.8) != 0)


def test_hooks_apply_the_relative_rule_to_the_names_it_lists():
    m = _Probe()
    x = torch.tensor([[[4.0, 1.0, 1.0, 2.0]], [[40.0, 10.0, 10.0, 20.0]]])  # mean |x| 2 and 20
    for th, want in ((Thresholds({"lin": 0.9}, relative={"lin"}), [[4, 0, 0, 2], [40, 0, 0, 20]]),
                     ({"lin": 1.5}, [[4, 0, 0, 2], [40, 10, 10, 20]])):
        with apply_thresholds(m, th, prefill="all", count=True) as handle:
            got = []
            h = m.lin.register_forward_pre_hook(lambda mod, a: got.append(a[0].clone()))
            m(x)
            h.remove()
            achieved = handle.achieved()["lin"]
        assert got[0].flatten(1).tolist() == want
        assert achieved == sum(v == 0 for row in want for v in row) / 8


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
