"""Schedule variants: uniform, SD3-style shifted, the paper's length-shifted (C.4), and an explicit list."""

from __future__ import annotations

import math

import pydantic
import torch
from torch import Tensor

from ntm.forward.base import SCHEDULES, ComponentConfig, Schedule, ScheduleError, validate_times


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


LENGTH_SHIFT_BASE_TOKENS = 256
"""Token count at which the paper's shift parameter is ``mu = 0.5`` (C.4: 256 tokens, a 16 x 16 latent grid)."""
LENGTH_SHIFT_SLOPE_TOKENS = 4096 - 256
"""Tokens over which ``mu`` rises by 0.65 (C.4 writes ``(L - 256) / (4096 - 256)``)."""


def length_shift_mu(tokens: int) -> float:
    """The paper's shift parameter ``mu = 0.5 + 0.65 (L - 256) / 3840`` for ``L = tokens`` (C.4; not clamped)."""
    return 0.5 + 0.65 * (tokens - LENGTH_SHIFT_BASE_TOKENS) / LENGTH_SHIFT_SLOPE_TOKENS


def length_shifted_levels(num_steps: int, mu: float) -> Tensor:
    """``(K + 1,)`` float64 ``sigma_0 .. sigma_K`` of C.4: ``e^mu / (e^mu + 1 / sigma~_k - 1)``, ``sigma~_k = k / K``.

    Computed as ``sigma~ / (sigma~ + e^-mu (1 - sigma~))``, the same value without overflow at large ``mu``;
    ``sigma_0 = 0`` and ``sigma_K = 1`` exactly, and ``mu = 0`` gives ``sigma_k = k / K``.
    """
    base = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return base / (base + math.exp(-mu) * (1.0 - base))


class LengthShiftedConfig(ComponentConfig):
    t_min: float = pydantic.Field(0.05, gt=0.0, lt=1.0)
    """Noise floor t_0 (> 0)."""
    tokens: int = pydantic.Field(LENGTH_SHIFT_BASE_TOKENS, ge=1)
    """Sequence length L of the state the model sees (its token count N; the paper's L_seq, the number of patches);
    sets mu = 0.5 + 0.65 (L - 256) / 3840. A preset sets it to its layout's token count; the default 256 is the
    paper's from-scratch 16 x 16 grid (mu = 0.5)."""
    rescale: bool = False
    """False (the paper, C.4): t_0 = t_min and t_k = sigma_k for k >= 1, so every K with sigma_1 > t_min.
    True: t_k = t_min + (1 - t_min) sigma_k, the ``shifted`` schedule with shift e^mu (every K)."""

    @property
    def mu(self) -> float:
        """The shift parameter for :attr:`tokens`."""
        return length_shift_mu(self.tokens)

    def build(self) -> "LengthShiftedSchedule":
        return LengthShiftedSchedule(self)


@SCHEDULES.register("length-shifted", LengthShiftedConfig)
class LengthShiftedSchedule(Schedule):
    """The paper's C.4 schedule: uniform levels shifted by ``e^mu``, ``mu`` growing with the token count.

    ``t_0 = t_min``, ``t_k = sigma_k = e^mu / (e^mu + K / k - 1)`` for ``k = 1 .. K`` (``rescale``: mapped into
    ``[t_min, 1]`` instead); more tokens, larger ``mu``, more levels near noise.
    """

    def __init__(self, config: LengthShiftedConfig) -> None:
        self.config = config

    def _levels(self, num_steps: int) -> Tensor:
        return length_shifted_levels(num_steps, self.config.mu)

    def supports(self, num_steps: int) -> bool:
        if num_steps < 1:
            return False
        return self.config.rescale or self._levels(num_steps)[1].item() > self.config.t_min

    def times(self, num_steps: int) -> Tensor:
        if num_steps >= 1 and not self.supports(num_steps):
            raise ScheduleError(
                f"LengthShiftedSchedule(K={num_steps}): sigma_1 = {self._levels(num_steps)[1].item():.4g} is not above "
                f"t_min = {self.config.t_min:g} (tokens = {self.config.tokens}, mu = {self.config.mu:.4g}); use fewer "
                "steps, a smaller t_min, or rescale=True")
        return super().times(num_steps)

    def _times(self, num_steps: int) -> Tensor:
        sigma = self._levels(num_steps)
        t_min = self.config.t_min
        if self.config.rescale:
            return t_min + (1 - t_min) * sigma
        return torch.cat([torch.tensor([t_min], dtype=torch.float64), sigma[1:]])


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
