"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

# CI runs hypothesis derandomized (reproducible); locally every run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Two cores: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(int(os.environ.get("NTM_TEST_THREADS", "2")))


def perturb_(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter so zero-initialised maps move far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module
