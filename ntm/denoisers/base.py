"""The denoiser interface: a sampled trajectory -> a clean estimate ``x_hat``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from registry import ComponentConfig, Registry


class Denoiser(ABC):
    @abstractmethod
    def __call__(self, model: torch.nn.Module, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """``trajectory`` ``(K + 1, B, N, d)`` in x-space (``x_{t_0} .. x_{t_K}``) -> ``x_hat`` ``(B, N, d)``."""


DENOISERS: Registry[Denoiser] = Registry("denoiser", base=Denoiser)

__all__ = ["DENOISERS", "ComponentConfig", "Denoiser"]
