"""The ancestral NTM sampler (docs/math.md §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pydantic
import torch
from torch import Tensor

from ntm.samplers.base import (
    GUIDANCE_MAX, SAMPLERS, TEMPERATURE_MAX, Rows, SampleOutput, Sampler, SamplerConfig, draw_from, draw_normal, model_device_dtype,
)
from ntm.distributions import Gaussian
from ntm.samplers.guidance import GAUSSIAN_ONLY, guidance_conditions, guide, guided

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig


class AncestralConfig(SamplerConfig):
    temperature: float = pydantic.Field(1.0, gt=0, le=TEMPERATURE_MAX)
    """Scales the prior noise and every step's noise (> 0, at most 100)."""
    guidance: float = pydantic.Field(0.0, ge=0, le=GUIDANCE_MAX)
    """Classifier-free guidance weight w (0 = unguided; at most 100)."""
    num_steps: int | None = pydantic.Field(None, ge=1)
    """K to sample with (None: the largest K the model was trained for)."""

    def build(self) -> "AncestralSampler":
        return AncestralSampler(self)

    def check_model(self, model: "NTMConfig") -> None:
        if self.guidance and not issubclass(model.predictor.output_distribution(), Gaussian):
            raise ValueError(GAUSSIAN_ONLY)


@SAMPLERS.register("ancestral", AncestralConfig)
class AncestralSampler(Sampler):
    """``u_K ~ N(0, tau^2)``; ``u_{k-1}`` drawn from the predictor's distribution at temperature ``tau`` (a Gaussian:
    ``mu + sigma tau z`` with guided ``(mu, sigma)``); ``x_{t_0} = f^{-1}(u_0)``.

    ``return_trajectory="u"`` stops before ``f^{-1}``: the u-trajectory alone, nothing decoded.
    """

    config: AncestralConfig
    splits_batch = True

    def __init__(self, config: AncestralConfig | None = None) -> None:
        super().__init__(config or AncestralConfig())

    @torch.no_grad()
    def __call__(
        self,
        model: "NTM",
        n: int,
        cond: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        return_trajectory: bool | Literal["u"] = False,
        rows: Rows | None = None,
    ) -> SampleOutput:
        num_steps = self.config.num_steps or max(model.process.steps)
        tau = self.config.temperature
        device, dtype = model_device_dtype(model)
        times = model.process.times(num_steps, device=device, dtype=dtype)
        shape = (n, model.dims.num_tokens, model.dims.token_dim)
        u = draw_normal(shape, rows, generator=generator, dtype=dtype, device=device) * tau
        raw = cond
        cond, null = guidance_conditions(model, cond, n, device)  # encoded once for every step and the decoding
        levels = [u]
        cache = model.predictor.new_cache()  # guided: one KV cache for the batch of both branches

        def step(u_in: Tensor, t: Tensor, s: Tensor, c):
            return model.predictor.step(u_in, t, s, c, cache)

        for k in range(num_steps, 0, -1):
            t = times[k].expand(n)
            s = times[k - 1].expand_as(t)
            g = guided(step, (u, t, s), cond, weight=self.config.guidance, null=null, rule=guide)
            u = draw_from(g, tau, generator, rows).to(dtype)
            levels.append(u)
        u_traj = torch.stack(levels[::-1])  # u_0 .. u_K
        if return_trajectory == "u":  # the caller decodes what it needs (e.g. a denoiser that reads u_0)
            return SampleOutput(x=None, times=times, u_trajectory=u_traj, cond=raw)
        decoded = num_steps if return_trajectory else 1  # x-space decoding, batched over levels
        x_lo = model.decode_levels(u_traj[:decoded], times[:decoded], cond)
        out = SampleOutput(x=x_lo[0], times=times, cond=raw)
        if return_trajectory:
            out.u_trajectory = u_traj
            out.x_trajectory = torch.cat([x_lo, u_traj[num_steps:]])
        return out


__all__ = ["AncestralConfig", "AncestralSampler"]
