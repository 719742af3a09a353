"""Peak compute-device memory of layer-by-layer pruning, on paper (checked against measurements in
``benchmarks/prune_7b.py``; worked numbers in ``benchmarks/NOTES.md (Pruning)``).

With ``b`` bytes per weight/activation (2 for fp16/bf16), ``n x L`` calibration tokens, hidden size
``h``, MLP size ``I``, attention width ``a = heads * head_dim``, key/value width ``kv``, vocab ``V``:

- calibration activations: inputs + outputs of the current layer, ``2 n L h b`` (the biggest term);
- one decoder layer: ``(h (a + 2 kv) + a h + 3 h I) b``;
- one sample through the layer (the forward is run one sample at a time): ~``L (3 I + 2 a + 2 kv + h) b``;
- Wanda: per-site norm vectors (tiny) + the hook's float32 copy and square of the widest input
  ``2 L I 4``;
- SparseGPT: float32 Hessians of the four input sites,
  ``(h^2 [q/k/v] + a^2 [o] + h^2 [gate/up] + I^2 [down]) 4``, kept from the forward until each
  site is pruned (in that order, each freed after use); pruning a site adds one more ``in^2 4``
  (of Hessian, Cholesky factor, inverse and its factor, two are alive at a time) and the stacked
  weights of the site in the model dtype and in float32;
- magnitude: one layer + the float32 scores and sort of the largest linear.

Not counted: the CUDA context (~0.5 GiB, outside ``max_memory_allocated``) and allocator slack.
"""
from __future__ import annotations


def _dims(config) -> dict:
    c = getattr(config, "config", config)
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    return dict(h=c.hidden_size, I=c.intermediate_size, a=heads * head_dim, kv=kv_heads * head_dim, V=c.vocab_size)


def peak_estimate(config, method: str, nsamples: int, seqlen: int, bytes_per_value: int = 2) -> dict[str, int]:
    """Estimated peak device bytes by phase; ``"peak"`` is the max over phases."""
    d = _dims(config)
    h, I, a, kv, V, b = d["h"], d["I"], d["a"], d["kv"], d["V"], bytes_per_value
    tokens = nsamples * seqlen
    acts = 2 * tokens * h * b
    layer = (h * (a + 2 * kv) + a * h + 3 * h * I) * b
    sample = seqlen * (3 * I + 2 * a + 2 * kv + h) * b
    capture = V * h * b + 2 * tokens * h * b  # embeddings + the captured inputs while concatenated
    est = {"activations": acts, "layer": layer, "capture": capture}
    if method == "magnitude":
        biggest = max(h * I, h * (a + 2 * kv), a * h)
        est["method"] = biggest * (4 + 4 + 8)  # float32 scores, sorted values, int64 indices
        est["peak"] = max(layer + est["method"], V * h * b)
        return est
    if method == "wanda":
        est["method"] = 2 * seqlen * I * 4
        est["peak"] = max(capture, acts + layer + sample + est["method"])
        return est
    sites = [h * h, a * a, h * h, I * I]  # attn (q/k/v), o, mlp (gate/up), down: input widths squared
    rows = [a + 2 * kv, h, 2 * I, h]
    cols = [h, a, h, I]
    hess = sum(sites) * 4
    forward = acts + layer + sample + hess + seqlen * max(h, I) * 4
    prune = 0
    for k in range(4):  # site k is pruned while the Hessians of sites k.. are still alive
        live = sum(sites[k:]) * 4 + sites[k] * 4 + rows[k] * cols[k] * (4 + b)
        prune = max(prune, acts + layer + live)
    est["method"] = hess
    est["peak"] = max(capture, forward, prune)
    return est
