"""Tiny random models of every supported family, for tests and synthetic benchmarks; the start of the
float64 sequential-OBS references the SparseGPT tests compare against."""
from __future__ import annotations

import torch

TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)


def tiny_config(model_type: str = "llama", **overrides):
    from transformers import AutoConfig

    kwargs = dict(TINY) | overrides
    if model_type == "qwen3":
        kwargs.setdefault("head_dim", kwargs["hidden_size"] // kwargs["num_attention_heads"])
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype)
    return model.eval()


def obs_start(W: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 copy of W with the columns of dead inputs zeroed, and the inverse of the damped Hessian
    2 X^T X / n (+ 1 on dead diagonals, + 1 % of the mean diagonal): how SparseGPT starts."""
    W = W.double().clone()
    X = X.double()
    cols = W.shape[1]
    H = 2 * X.T @ X / X.shape[0]
    dead = torch.diagonal(H) == 0
    for j in torch.nonzero(dead).flatten().tolist():
        H[j, j] = 1.0
        W[:, j] = 0.0
    H += 0.01 * torch.diagonal(H).mean() * torch.eye(cols, dtype=torch.float64)
    return W, torch.linalg.inv(H)
