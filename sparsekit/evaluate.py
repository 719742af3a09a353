"""Perplexity with the standard non-overlapping-window protocol (as in Wanda/SparseGPT/TEAL).

The evaluation tokens are cut into ``N // seqlen`` windows of ``seqlen`` tokens (the tail is
dropped); each window is scored independently (no context carried over); perplexity is
``exp(sum of token NLLs / number of predicted tokens)``, computed in float32.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sparsekit.errors import BadInput


@dataclass
class Perplexity:
    ppl: float
    nll: float
    tokens: int
    windows: int
    seqlen: int
    dataset: str = ""

    @property
    def protocol(self) -> str:
        return (f"{self.dataset or 'text'}: {self.windows} non-overlapping windows x {self.seqlen} tokens, "
                f"{self.tokens} predicted tokens")

    def as_dict(self) -> dict:
        return asdict(self) | {"protocol": self.protocol}


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seqlen: int, dataset: str = "", max_windows: int | None = None,
               progress=None) -> Perplexity:
    """Perplexity of ``model`` on ``tokens`` ``[1, N]``; ``progress(i, n)`` is called per window."""
    ids = tokens.reshape(-1)
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise BadInput(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}.")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for w in range(windows):
        batch = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum")
        total += float(loss)
        count += seqlen - 1
        if progress is not None:
            progress(w + 1, windows)
    nll = total / count
    return Perplexity(ppl=math.exp(nll), nll=nll, tokens=count, windows=windows, seqlen=seqlen, dataset=dataset)
