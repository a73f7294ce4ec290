"""The sampler interface: ``(model, n, cond, steps, guidance, temperature) -> SampleOutput``."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from registry import ComponentConfig, Registry


@dataclasses.dataclass
class SampleOutput:
    x: Tensor
    """Samples ``x_{t_0}`` as tokens ``(B, N, d)`` (still carrying noise floor t_0)."""
    times: Tensor
    """``(K + 1,)`` levels used."""
    u_trajectory: Tensor | None = None
    """``(K + 1, B, N, d)``: ``u_0 .. u_K`` (on request)."""
    x_trajectory: Tensor | None = None
    """``(K + 1, B, N, d)``: ``x_{t_0} .. x_{t_K}`` (on request; decoded batched over levels)."""
    cond: Tensor | None = None
    """The labels sampled with."""


class Sampler(ABC):
    @abstractmethod
    def __call__(
        self,
        model: torch.nn.Module,
        n: int,
        cond: Tensor | None = None,
        num_steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        return_trajectory: bool = False,
        generator: torch.Generator | None = None,
    ) -> SampleOutput: ...


SAMPLERS: Registry[Sampler] = Registry("sampler", base=Sampler)

__all__ = ["SAMPLERS", "ComponentConfig", "SampleOutput", "Sampler"]
