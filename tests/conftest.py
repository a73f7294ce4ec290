"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

from ntm.testing import perturb_  # noqa: F401  (moved to ntm.testing; re-exported for the tests that import it here)

# CI runs hypothesis derandomized (reproducible); locally every run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Two cores: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(int(os.environ.get("NTM_TEST_THREADS", "2")))

