"""The Markov trajectory process of docs/math.md §3–4, with per-example step counts."""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from ntm.forward import interpolant as I
from ntm.forward.base import SCHEDULES, ScheduleError
from ntm.forward.schedules import UniformConfig
from ntm.registry import ComponentConfig, Registry


class ForwardProcess:
    """Base interface: schedules, trajectories, posterior, covariance."""


FORWARD_PROCESSES: Registry[ForwardProcess] = Registry("forward process", base=ForwardProcess)


class MarkovConfig(ComponentConfig):
    schedule: SCHEDULES.field() = UniformConfig()
    """Time schedule t_0 < ... < t_K = 1 for each K."""
    steps: tuple[int, ...] = (4,)
    """Step counts K the model is trained for; each example draws one uniformly."""

    @pydantic.field_validator("steps")
    @classmethod
    def _check_steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"steps must be distinct integers >= 1, got {v}")
        return tuple(sorted(v))

    @pydantic.model_validator(mode="after")
    def _check_schedule(self) -> "MarkovConfig":
        schedule = self.schedule.build()
        for k in self.steps:
            try:
                schedule.times(k)
            except ScheduleError as e:
                raise ValueError(f"schedule cannot serve K = {k}: {e}") from None
        return self

    def build(self) -> "MarkovProcess":
        return MarkovProcess(self)


@FORWARD_PROCESSES.register("markov", MarkovConfig)
class MarkovProcess(ForwardProcess):
    """``x_{t_0} ~ N(alpha x, sigma^2)``, then ``x_{t_k} = a x_{t_{k-1}} + b xi`` (§3)."""

    def __init__(self, config: MarkovConfig) -> None:
        self.config = config
        self.schedule = config.schedule.build()
        self.steps = config.steps

    # -- schedule ---------------------------------------------------------
    def times(self, num_steps: int, *, device=None, dtype=torch.float32) -> Tensor:
        """``(K + 1,)`` levels ``t_0 .. t_K``."""
        return self.schedule.times(num_steps).to(device=device, dtype=dtype)

    def sample_num_steps(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``(B,)`` step counts drawn uniformly from the configured set."""
        gen_device = generator.device if generator is not None else device
        choices = torch.tensor(self.steps, dtype=torch.long, device=gen_device)
        idx = torch.randint(len(self.steps), (batch,), generator=generator, device=gen_device)
        return choices[idx].to(device)

    # -- sampling ---------------------------------------------------------
    def sample_trajectory(self, x: Tensor, times: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(K + 1, *x.shape)``: levels ``x_{t_0} .. x_{t_K}`` of one Markov trajectory per example.

        ``times`` is ``(K + 1,)`` shared by the batch.
        """
        times = times.to(dtype=x.dtype, device=x.device)
        levels = [I.alpha(times[0]) * x + I.sigma(times[0]) * _randn_like(x, generator)]
        for k in range(1, times.numel()):
            a, b2 = I.transition(times[k - 1], times[k])
            levels.append(a * levels[-1] + b2.sqrt() * _randn_like(x, generator))
        return torch.stack(levels)

    def sample_pair(
        self, x: Tensor, s: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_s, x_t)`` for per-example ``s < t`` (``(B,)``), with the trajectory's joint law."""
        s, t = _per_example(s, x), _per_example(t, x)
        x_s = I.alpha(s) * x + I.sigma(s) * _randn_like(x, generator)
        a, b2 = I.transition(s, t)
        return x_s, a * x_s + b2.sqrt() * _randn_like(x, generator)

    # -- closed forms -----------------------------------------------------
    @staticmethod
    def posterior(x: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_s | x_t, x)`` (§4); ``s, t`` are ``(B,)`` or scalars."""
        c_x, c_t, var = I.posterior(_per_example(s, x), _per_example(t, x))
        return c_x * x + c_t * x_t, var

    @staticmethod
    def covariance(times: Tensor) -> Tensor:
        """Per-coordinate trajectory covariance ``Sigma`` over the given levels (§3)."""
        return I.trajectory_covariance(times)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def _per_example(t: Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or ``(B,)`` time against ``like`` of shape ``(B, ...)``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))
