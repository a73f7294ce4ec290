"""Schedule variants: uniform, SD3-style shifted, and an explicit list."""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from ntm.forward.base import SCHEDULES, ComponentConfig, Schedule, validate_times


class UniformConfig(ComponentConfig):
    t_min: float = pydantic.Field(0.05, gt=0.0, lt=1.0)
    """Noise floor t_0 (> 0)."""

    def build(self) -> "UniformSchedule":
        return UniformSchedule(self)


@SCHEDULES.register("uniform", UniformConfig)
class UniformSchedule(Schedule):
    """``t_k = t_min + (1 - t_min) k / K``."""

    def __init__(self, config: UniformConfig) -> None:
        self.config = config

    def _times(self, num_steps: int) -> Tensor:
        return torch.linspace(self.config.t_min, 1.0, num_steps + 1, dtype=torch.float64)


class ShiftedConfig(ComponentConfig):
    t_min: float = pydantic.Field(0.05, gt=0.0, lt=1.0)
    """Noise floor t_0 (> 0)."""
    shift: float = pydantic.Field(3.0, gt=0.0)
    """SD3 shift: > 1 spends more levels near noise, < 1 near data."""

    def build(self) -> "ShiftedSchedule":
        return ShiftedSchedule(self)


@SCHEDULES.register("shifted", ShiftedConfig)
class ShiftedSchedule(Schedule):
    """``t_k = t_min + (1 - t_min) g(k / K)`` with ``g(u) = s u / (1 + (s - 1) u)``."""

    def __init__(self, config: ShiftedConfig) -> None:
        self.config = config

    def _times(self, num_steps: int) -> Tensor:
        u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
        s = self.config.shift
        g = s * u / (1 + (s - 1) * u)
        return self.config.t_min + (1 - self.config.t_min) * g


class ExplicitConfig(ComponentConfig):
    times: tuple[float, ...] = (0.05, 0.3, 0.6, 1.0)
    """The levels t_0 < ... < t_K = 1 (one step count: K = len(times) - 1)."""

    @pydantic.field_validator("times")
    @classmethod
    def _check(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        validate_times(torch.tensor(v, dtype=torch.float64, device="cpu"), where="times")
        return v

    def build(self) -> "ExplicitSchedule":
        return ExplicitSchedule(self)


@SCHEDULES.register("explicit", ExplicitConfig)
class ExplicitSchedule(Schedule):
    """A user-given list of levels; defines exactly one K."""

    def __init__(self, config: ExplicitConfig) -> None:
        self.config = config

    def supports(self, num_steps: int) -> bool:
        return num_steps == len(self.config.times) - 1

    def _times(self, num_steps: int) -> Tensor:
        return torch.tensor(self.config.times, dtype=torch.float64)
