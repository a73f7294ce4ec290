"""The ancestral NTM sampler (ntm-math §6)."""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from ntm.model import NTM
from ntm.samplers.base import SAMPLERS, ComponentConfig, SampleOutput, Sampler
from ntm.samplers.guidance import guide


class AncestralConfig(ComponentConfig):
    temperature: float = pydantic.Field(1.0, gt=0)
    """Scales the prior noise and every step's noise."""
    guidance: float = pydantic.Field(0.0, ge=0)
    """Classifier-free guidance weight w (0 = unguided)."""
    num_steps: int | None = pydantic.Field(None, ge=1)
    """K to sample with (None: the largest K the model was trained for)."""

    def build(self) -> "AncestralSampler":
        return AncestralSampler(self)


@SAMPLERS.register("ancestral", AncestralConfig)
class AncestralSampler(Sampler):
    """``u_K ~ N(0, tau^2)``; ``u_{k-1} = mu + sigma tau z`` with guided ``(mu, sigma)``; ``x_{t_0} = f^{-1}(u_0)``."""

    def __init__(self, config: AncestralConfig | None = None) -> None:
        self.config = config or AncestralConfig()

    @torch.no_grad()
    def __call__(
        self,
        model: NTM,
        n: int,
        cond: Tensor | None = None,
        num_steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        return_trajectory: bool = False,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        num_steps = num_steps or self.config.num_steps or max(model.process.steps)
        w = self.config.guidance if guidance is None else guidance
        tau = self.config.temperature if temperature is None else temperature
        device, dtype = _device_dtype(model)
        times = model.process.times(num_steps, device=device, dtype=dtype)
        guided = w != 0 and cond is not None
        if w != 0 and model.dims.num_classes == 0:
            raise ValueError("guidance needs a class-conditional model (num_classes > 0)")
        shape = (n, model.dims.num_tokens, model.dims.token_dim)
        u = torch.randn(shape, generator=generator, dtype=dtype, device=device) * tau
        levels = [u]
        # Conditional and unconditional branches run as one batch of 2n (one KV cache for both).
        batch_cond = cond
        if guided:
            null = torch.full_like(cond, model.dims.num_classes)
            batch_cond = torch.cat([cond, null])
        cache = model.predictor.new_cache()
        for k in range(num_steps, 0, -1):
            t = times[k].expand(n * (2 if guided else 1))
            s = times[k - 1].expand_as(t)
            u_in = torch.cat([u, u]) if guided else u
            g = model.predictor.step(u_in, t, s, batch_cond, cache)
            if guided:
                g = guide(g.map(lambda z: z[:n]), g.map(lambda z: z[n:]), w)
            z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            u = (g.mu + g.sigma * tau * z).to(dtype)
            levels.append(u)
        u_traj = torch.stack(levels[::-1])  # u_0 .. u_K
        decoded = num_steps if return_trajectory else 1  # x-space decoding, batched over levels
        x_lo = model.decode_levels(u_traj[:decoded], times[:decoded], cond)
        out = SampleOutput(x=x_lo[0], times=times, cond=cond)
        if return_trajectory:
            out.u_trajectory = u_traj
            out.x_trajectory = torch.cat([x_lo, u_traj[num_steps:]])
        return out


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision (float32 or wider) the model's tensors live."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, torch.promote_types(tensor.dtype, torch.float32)
    return torch.device("cpu"), torch.float32


__all__ = ["AncestralConfig", "AncestralSampler"]
