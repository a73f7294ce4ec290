"""Trajectory score denoising (docs/math.md §7) and the do-nothing denoiser."""

from __future__ import annotations

import torch
from torch import Tensor

from ntm.conditioning.condition import encode_condition
from ntm.denoisers.base import DENOISERS, Denoiser, DenoiserConfig
from ntm.forward import interpolant as I


class NoDenoiserConfig(DenoiserConfig):
    def build(self) -> "NoDenoiser":
        return NoDenoiser()


@DENOISERS.register("none", NoDenoiserConfig)
class NoDenoiser(Denoiser):
    """Returns ``x_{t_0}`` unchanged (it still carries the noise floor).

    From a sampled ``u_0`` it decodes that level only (what the sampler itself does by default).
    """

    needs_x_trajectory = False

    def __call__(self, model, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        return trajectory[0]

    @torch.no_grad()
    def from_u0(self, model, u0: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        return model.decode_levels(u0[None], times[:1], encode_condition(model, cond, u0.shape[0]))[0]


class ScoreDenoiserConfig(DenoiserConfig):
    def build(self) -> "ScoreDenoiser":
        return ScoreDenoiser()


@DENOISERS.register("score", ScoreDenoiserConfig)
class ScoreDenoiser(Denoiser):
    """``x_hat = (x_{t_0} + sum_j Sigma_{0j} S_j) / alpha_{t_0}`` with ``S = -grad_X sum_k l_k`` (one backward pass).

    ``X = (x_{t_0} .. x_{t_{K-1}})``; ``Sigma`` is the K x K trajectory
    covariance of §3 acting on the step axis, per coordinate.
    """

    def __call__(self, model, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        num_steps = times.numel() - 1
        cond = encode_condition(model, cond, trajectory.shape[1])  # labels pass through; token ids are encoded
        with torch.enable_grad():
            x_levels = trajectory[:num_steps].detach().requires_grad_(True)
            full = torch.cat([x_levels, trajectory[num_steps:].detach()])
            total = model.step_nlls(full, times, cond).sum()
            (grad,) = torch.autograd.grad(total, x_levels)
        score = -grad
        sigma = I.trajectory_covariance(times[:num_steps].to(score.dtype))
        correction = torch.einsum("j,j...->...", sigma[0], score)
        return (x_levels.detach()[0] + correction) / I.alpha(times[0]).to(score.dtype)
