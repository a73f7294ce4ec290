"""Samplers. Each variant registers in ``SAMPLERS``; every setting lives in its config."""

from ntm.samplers.ancestral import AncestralConfig, AncestralSampler
from ntm.samplers.base import SAMPLERS, SampleOutput, Sampler, SamplerConfig, model_device_dtype
from ntm.samplers.guidance import guide, guide_velocity, guided
from ntm.samplers.ode import EulerConfig, EulerSampler, HeunConfig, HeunSampler, ODEConfig, ODESampler, nfe

__all__ = [
    "SAMPLERS", "AncestralConfig", "AncestralSampler", "EulerConfig", "EulerSampler", "HeunConfig", "HeunSampler",
    "ODEConfig", "ODESampler", "SampleOutput", "Sampler", "SamplerConfig", "guide", "guide_velocity", "guided",
    "model_device_dtype", "nfe",
]
