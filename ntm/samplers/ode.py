"""Flow-matching ODE samplers: Euler and Heun from t = 1 (noise) to t = 0 (data), with CFG."""

from __future__ import annotations

from typing import Literal

import pydantic
import torch
from torch import Tensor

from ntm.samplers.ancestral import _device_dtype
from ntm.samplers.base import SAMPLERS, ComponentConfig, SampleOutput, Sampler


class ODEConfig(ComponentConfig):
    num_steps: int = pydantic.Field(64, ge=1)
    """Integration steps (uniform in t). NFE: Euler = steps, Heun = 2 * steps - 1."""
    guidance: float = pydantic.Field(0.0, ge=0)
    """Classifier-free guidance weight w: v = v_u + (1 + w)(v_c - v_u)."""
    temperature: float = pydantic.Field(1.0, gt=0)
    """Scales the initial noise."""


class EulerConfig(ODEConfig):
    def build(self) -> "ODESampler":
        return ODESampler(self, "euler")


class HeunConfig(ODEConfig):
    def build(self) -> "ODESampler":
        return ODESampler(self, "heun")


def nfe(method: Literal["euler", "heun"], num_steps: int) -> int:
    """Velocity evaluations of one sample (Heun's last step is an Euler step, at t = 0)."""
    return num_steps if method == "euler" else 2 * num_steps - 1


class ODESampler(Sampler):
    """Integrates ``dx/dt = v(x, t)`` backwards in time on a uniform grid ``1 = t_n > ... > t_0 = 0``."""

    def __init__(self, config: ODEConfig, method: Literal["euler", "heun"]) -> None:
        self.config = config
        self.method = method

    def _velocity(self, model, x: Tensor, t: float, cond: Tensor | None, w: float) -> Tensor:
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        if w == 0 or cond is None:
            return model.velocity(x, tt, cond).to(x.dtype)
        null = torch.full_like(cond, model.dims.num_classes)
        v = model.velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null])).to(x.dtype)
        v_c, v_u = v.chunk(2)
        return v_u + (1 + w) * (v_c - v_u)

    @torch.no_grad()
    def __call__(self, model, n: int, cond: Tensor | None = None, num_steps: int | None = None,
                 guidance: float | None = None, temperature: float | None = None, return_trajectory: bool = False,
                 generator: torch.Generator | None = None) -> SampleOutput:
        steps = num_steps or self.config.num_steps
        w = self.config.guidance if guidance is None else guidance
        tau = self.config.temperature if temperature is None else temperature
        device, dtype = _device_dtype(model)
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        shape = (n, model.dims.num_tokens, model.dims.token_dim)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device) * tau
        states = [x]
        for i in range(steps):
            t, s = grid[i], grid[i + 1]
            v = self._velocity(model, x, t, cond, w)
            if self.method == "heun" and s > 0:
                x_euler = x + (s - t) * v
                v = 0.5 * (v + self._velocity(model, x_euler, s, cond, w))
            x = x + (s - t) * v
            states.append(x)
        times = torch.tensor(grid[::-1], dtype=dtype, device=device)  # ascending: 0 .. 1
        out = SampleOutput(x=x, times=times, cond=cond)
        if return_trajectory:
            out.x_trajectory = torch.stack(states[::-1])  # x at t = 0 first, as SampleOutput promises
        return out


SAMPLERS.register("euler", EulerConfig)(ODESampler)
SAMPLERS.register("heun", HeunConfig)(ODESampler)
