"""Shared pytest setup.

- Tests marked ``cuda`` are skipped when torch sees no CUDA device.
- Without a GPU, Triton kernels run in the interpreter: ``TRITON_INTERPRET=1`` is set here, before
  any test module imports a kernel (Triton reads it when a kernel is defined).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
