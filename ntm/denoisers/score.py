"""Trajectory score denoising (docs/math.md §7) and the do-nothing denoiser."""

from __future__ import annotations

import math

import pydantic
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
    clip_percentile: float | None = None
    """Paper Algorithm 3 line 4 (percentile gradient clipping): a percentile p in (0, 100]. Per example, the
    gradient's elements over all its levels t_0 .. t_{K-1} and coordinates are clamped to [-tau, tau], tau the p-th
    percentile of their absolute values (linear interpolation between order statistics, numpy's default); the
    clipped gradient then enters the correction. 100 clips nothing; None (default): no clipping."""

    @pydantic.field_validator("clip_percentile")
    @classmethod
    def _check_percentile(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 100.0:
            raise ValueError(f"clip_percentile must be a percentile in (0, 100], got {v:g}")
        return v

    def build(self) -> "ScoreDenoiser":
        return ScoreDenoiser(self)


@DENOISERS.register("score", ScoreDenoiserConfig)
class ScoreDenoiser(Denoiser):
    """``x_hat = (x_{t_0} + sum_j Sigma_{0j} S_j) / alpha_{t_0}`` with ``S = -grad_X sum_k l_k`` (one backward pass).

    ``X = (x_{t_0} .. x_{t_{K-1}})``; ``Sigma`` is the K x K trajectory
    covariance of §3 acting on the step axis, per coordinate. With ``clip_percentile`` the gradient is first
    clipped per example (:func:`percentile_clip`, paper Algorithm 3 line 4).
    """

    def __init__(self, config: ScoreDenoiserConfig | None = None) -> None:
        self.config = config if config is not None else ScoreDenoiserConfig()

    def __call__(self, model, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        num_steps = times.numel() - 1
        cond = encode_condition(model, cond, trajectory.shape[1])  # labels pass through; token ids are encoded
        with torch.enable_grad():
            x_levels = trajectory[:num_steps].detach().requires_grad_(True)
            full = torch.cat([x_levels, trajectory[num_steps:].detach()])
            total = model.step_nlls(full, times, cond).sum()
            (grad,) = torch.autograd.grad(total, x_levels)
        if self.config.clip_percentile is not None:
            grad = percentile_clip(grad, self.config.clip_percentile)
        score = -grad
        sigma = I.trajectory_covariance(times[:num_steps].to(score.dtype))
        correction = torch.einsum("j,j...->...", sigma[0], score)
        return (x_levels.detach()[0] + correction) / I.alpha(times[0]).to(score.dtype)


def percentile_threshold(grad: Tensor, percentile: float) -> Tensor:
    """``(B,)``: per example ``b`` (dim 1 of ``grad``, ``(K, B, ...)``), the ``percentile``-th percentile of
    ``|grad[:, b]|`` over all its elements, by linear interpolation between order statistics (numpy's default):
    the value at position ``p / 100 (n - 1)`` of the ``n`` sorted magnitudes; 100 gives the maximum."""
    flat = grad.detach().abs().transpose(0, 1).reshape(grad.shape[1], -1)
    ranked = flat.sort(dim=1).values
    position = percentile / 100.0 * (ranked.shape[1] - 1)
    lo = math.floor(position)
    hi = min(lo + 1, ranked.shape[1] - 1)
    frac = position - lo
    return ranked[:, lo] if frac == 0.0 else ranked[:, lo] + frac * (ranked[:, hi] - ranked[:, lo])


def percentile_clip(grad: Tensor, percentile: float) -> Tensor:
    """``grad`` ``(K, B, ...)`` with each example's elements clamped to ``[-tau_b, tau_b]``,
    ``tau_b = percentile_threshold(grad, percentile)[b]`` (paper Algorithm 3 line 4; docs/math.md §7)."""
    tau = percentile_threshold(grad, percentile).reshape(1, -1, *([1] * (grad.ndim - 2)))
    return torch.maximum(torch.minimum(grad, tau), -tau)
