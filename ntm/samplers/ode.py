"""Flow-matching ODE samplers: Euler and Heun from t = 1 (noise) to t = 0 (data), with CFG.

They integrate the velocity of a model whose predictor is a
:class:`~ntm.predictors.VelocityPredictor` (asked for with
:func:`~ntm.predictors.velocity_model`); both configs reject other predictors
when the experiment is validated.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import pydantic
import torch
from torch import Tensor

from ntm.predictors import VELOCITY_HINT, PREDICTORS, velocity_model
from ntm.samplers.base import (
    GUIDANCE_MAX, SAMPLERS, TEMPERATURE_MAX, Rows, SampleOutput, Sampler, SamplerConfig, draw_normal, model_device_dtype,
)
from ntm.samplers.guidance import guidance_conditions, guide_velocity, guided

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig

Velocity = Callable[[Tensor, float], Tensor]
"""``(x (B, N, d), t) -> v (B, N, d)``: the (guided) velocity field at one time."""


class ODEConfig(SamplerConfig):
    num_steps: int = pydantic.Field(64, ge=1)
    """Integration steps (uniform in t). NFE: Euler = steps, Heun = 2 * steps - 1."""
    guidance: float = pydantic.Field(0.0, ge=0, le=GUIDANCE_MAX)
    """Classifier-free guidance weight w: v = v_u + (1 + w)(v_c - v_u) (at most 100)."""
    temperature: float = pydantic.Field(1.0, gt=0, le=TEMPERATURE_MAX)
    """Scales the initial noise (> 0, at most 100)."""

    def check_model(self, model: "NTMConfig") -> None:
        if not model.predictor.gives_velocity():
            name, predictor = self.registry_name, PREDICTORS.name_of(model.predictor)
            raise ValueError(f"sampler {name} integrates a flow-matching velocity that predictor '{predictor}' "
                             f"does not give; use {VELOCITY_HINT}")


class ODESampler(Sampler):
    """Integrates ``dx/dt = v(x, t)`` backwards in time on a uniform grid ``1 = t_n > ... > t_0 = 0``.

    Not registered: each subclass is one integration rule (:meth:`step`) and
    counts its velocity evaluations (:meth:`nfe`).
    """

    config: ODEConfig
    splits_batch = True

    @classmethod
    @abstractmethod
    def nfe(cls, num_steps: int) -> int:
        """Velocity evaluations of one sample with ``num_steps`` integration steps."""

    @abstractmethod
    def step(self, velocity: Velocity, x: Tensor, t: float, s: float) -> Tensor:
        """``x`` at time ``t`` -> ``x`` at time ``s < t``, both ``(B, N, d)``."""

    @torch.no_grad()
    def __call__(
        self,
        model: "NTM",
        n: int,
        cond: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        rows: Rows | None = None,
    ) -> SampleOutput:
        vm = velocity_model(model)
        device, dtype = model_device_dtype(model)
        w = self.config.guidance
        encoded, null = guidance_conditions(model, cond, n, device)  # encoded once for the whole integration

        def branch(x: Tensor, t: Tensor, c) -> Tensor:
            return vm.velocity(x, t, c).to(x.dtype)

        def velocity(x: Tensor, t: float) -> Tensor:
            tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
            return guided(branch, (x, tt), encoded, weight=w, null=null, rule=guide_velocity)

        grid = torch.linspace(1.0, 0.0, self.config.num_steps + 1, dtype=torch.float64).tolist()
        shape = (n, model.dims.num_tokens, model.dims.token_dim)
        x = draw_normal(shape, rows, generator=generator, dtype=dtype, device=device) * self.config.temperature
        states = [x]
        for t, s in zip(grid[:-1], grid[1:]):
            x = self.step(velocity, x, t, s)
            states.append(x)
        times = torch.tensor(grid[::-1], dtype=dtype, device=device)  # ascending: 0 .. 1
        out = SampleOutput(x=x, times=times, cond=cond)
        if return_trajectory:
            out.x_trajectory = torch.stack(states[::-1])  # x at t = 0 first, as SampleOutput promises
        return out


class EulerConfig(ODEConfig):
    def build(self) -> "EulerSampler":
        return EulerSampler(self)


@SAMPLERS.register("euler", EulerConfig)
class EulerSampler(ODESampler):
    """``x_s = x_t + (s - t) v(x_t, t)``."""

    def __init__(self, config: EulerConfig | None = None) -> None:
        super().__init__(config or EulerConfig())

    @classmethod
    def nfe(cls, num_steps: int) -> int:
        return num_steps

    def step(self, velocity: Velocity, x: Tensor, t: float, s: float) -> Tensor:
        return x + (s - t) * velocity(x, t)


class HeunConfig(ODEConfig):
    def build(self) -> "HeunSampler":
        return HeunSampler(self)


@SAMPLERS.register("heun", HeunConfig)
class HeunSampler(ODESampler):
    """Heun's trapezoid predictor-corrector; the last step (to ``s = 0``) is an Euler step."""

    def __init__(self, config: HeunConfig | None = None) -> None:
        super().__init__(config or HeunConfig())

    @classmethod
    def nfe(cls, num_steps: int) -> int:
        return 2 * num_steps - 1

    def step(self, velocity: Velocity, x: Tensor, t: float, s: float) -> Tensor:
        v = velocity(x, t)
        if s > 0:
            x_euler = x + (s - t) * v
            v = 0.5 * (v + velocity(x_euler, s))
        return x + (s - t) * v


def nfe(method: str, num_steps: int) -> int:
    """Velocity evaluations of one sample of the registered ODE sampler ``method`` ("euler", "heun")."""
    cls = SAMPLERS.get(method).cls
    if not issubclass(cls, ODESampler):
        raise ValueError(f"sampler {method!r} is not an ODE sampler; its NFE depends on the model")
    return cls.nfe(num_steps)


__all__ = ["EulerConfig", "EulerSampler", "HeunConfig", "HeunSampler", "ODEConfig", "ODESampler", "nfe"]
