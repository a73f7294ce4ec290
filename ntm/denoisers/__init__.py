"""Denoisers of sampled trajectories. Each variant registers in ``DENOISERS``."""

from ntm.denoisers.base import DENOISERS, Denoiser, DenoiserConfig
from ntm.denoisers.learned import LearnedDenoiser, LearnedDenoiserConfig
from ntm.denoisers.score import NoDenoiser, NoDenoiserConfig, ScoreDenoiser, ScoreDenoiserConfig

__all__ = [
    "DENOISERS", "Denoiser", "DenoiserConfig", "LearnedDenoiser", "LearnedDenoiserConfig", "NoDenoiser",
    "NoDenoiserConfig", "ScoreDenoiser", "ScoreDenoiserConfig",
]
