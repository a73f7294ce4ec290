"""Samplers. Each variant registers in ``SAMPLERS``."""

from ntm.samplers.ancestral import AncestralConfig, AncestralSampler
from ntm.samplers.base import SAMPLERS, SampleOutput, Sampler
from ntm.samplers.guidance import guide

__all__ = ["SAMPLERS", "AncestralConfig", "AncestralSampler", "SampleOutput", "Sampler", "guide"]
