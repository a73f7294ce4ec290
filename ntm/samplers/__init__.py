"""Samplers. Each variant registers in ``SAMPLERS``."""

from ntm.samplers.ancestral import AncestralConfig, AncestralSampler
from ntm.samplers.base import SAMPLERS, SampleOutput, Sampler
from ntm.samplers.guidance import guide
from ntm.samplers.ode import EulerConfig, HeunConfig, ODESampler, nfe

__all__ = [
    "SAMPLERS", "AncestralConfig", "AncestralSampler", "EulerConfig", "HeunConfig", "ODESampler", "SampleOutput",
    "Sampler", "guide", "nfe",
]
