"""Denoisers of sampled trajectories. Each variant registers in ``DENOISERS``."""

from ntm.denoisers.base import DENOISERS, Denoiser
from ntm.denoisers.score import NoDenoiser, NoDenoiserConfig, ScoreDenoiser, ScoreDenoiserConfig

__all__ = ["DENOISERS", "Denoiser", "NoDenoiser", "NoDenoiserConfig", "ScoreDenoiser", "ScoreDenoiserConfig"]
