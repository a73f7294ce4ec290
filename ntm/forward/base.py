"""Time schedules: ``0 < t_0 < ... < t_K = 1`` for any K a model supports (docs/math.md §2)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ntm.registry import ComponentConfig, Registry


class ScheduleError(ValueError):
    """A schedule that is not strictly increasing from ``t_0 > 0`` to ``t_K = 1``."""


def validate_times(times: Tensor, where: str = "schedule") -> Tensor:
    """Check ``0 < t_0 < t_1 < ... < t_K = 1`` and return ``times`` (float64, on the CPU whatever the default device)."""
    if isinstance(times, Tensor) and times.is_meta:
        raise ScheduleError(f"{where}: times on the meta device have no values to check (build them on the CPU)")
    times = torch.as_tensor(times, dtype=torch.float64, device="cpu")
    if times.ndim != 1 or times.numel() < 2:
        raise ScheduleError(f"{where}: need at least two times t_0 < t_K, got {times.tolist()}")
    if not torch.isfinite(times).all():
        raise ScheduleError(f"{where}: times must be finite, got {times.tolist()}")
    if times[0] <= 0:
        raise ScheduleError(f"{where}: t_0 must be > 0 (a noise floor), got t_0 = {times[0].item():g}")
    if not (times[1:] > times[:-1]).all():
        raise ScheduleError(f"{where}: times must be strictly increasing, got {times.tolist()}")
    if abs(times[-1].item() - 1.0) > 1e-12:
        raise ScheduleError(f"{where}: t_K must be 1 (pure noise), got t_K = {times[-1].item():g}")
    return times


class Schedule(ABC):
    """Maps a step count ``K`` to the ``K + 1`` times ``t_0 .. t_K``."""

    @abstractmethod
    def _times(self, num_steps: int) -> Tensor: ...

    def supports(self, num_steps: int) -> bool:
        return num_steps >= 1

    def times(self, num_steps: int) -> Tensor:
        """Validated float64 tensor ``(K + 1,)`` on the CPU, also under another default device (e.g. a meta-device
        build: ``torch.device("meta")``), whose tensors hold no values to check."""
        if not self.supports(num_steps):
            raise ScheduleError(f"{type(self).__name__} does not define K = {num_steps}")
        with torch.device("cpu"):
            times = self._times(num_steps)
        return validate_times(times, where=f"{type(self).__name__}(K={num_steps})")


SCHEDULES: Registry[Schedule] = Registry("schedule", base=Schedule)

__all__ = ["SCHEDULES", "ComponentConfig", "Schedule", "ScheduleError", "validate_times"]
