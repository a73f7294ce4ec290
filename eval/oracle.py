"""Analytic oracles: exact trajectory densities of Gaussian-mixture data (docs/math.md §10).

For ``x ~ sum_j pi_j N(m_j, v_j I)`` the Markov trajectory is, per component,
jointly Gaussian: per coordinate, levels ``0..L-1`` have mean ``alpha_i m`` and
covariance ``C = v alpha alpha^T + Sigma`` (Sigma of §3). Everything here is
exact; tests and benchmarks measure models against it. The mixture itself
(parameters, sampling, the data density) is :class:`ntm.data.mixture.GaussianMixture`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ntm.data.mixture import GaussianMixture
from ntm.distributions import Gaussian
from ntm.forward import interpolant as I
from ntm.predictors.base import Predictor


# -- exact trajectory math of a mixture -------------------------------------------
def _level_moments(mixture: GaussianMixture, times: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate ``alpha (L,)`` and per-component covariance ``C (J, L, L)``."""
    times = times.to(torch.float64)
    a = I.alpha(times)
    sigma = I.trajectory_covariance(times)
    return a, mixture.variances[:, None, None] * a[None, :, None] * a[None, None, :] + sigma[None]


def component_trajectory_log_prob(mixture: GaussianMixture, levels: Tensor, times: Tensor) -> Tensor:
    """``log p_j(levels)`` for each component, ``levels (L, B, D)`` at ``times (L,)`` -> ``(B, J)``."""
    levels = levels.to(torch.float64)
    a, cov = _level_moments(mixture, times)
    chol = torch.linalg.cholesky(cov)  # (J, L, L)
    resid = levels.permute(1, 2, 0)[:, None] - a * mixture.means[None, :, :, None]  # (B, J, D, L)
    z = torch.linalg.solve_triangular(chol[None, :, None], resid.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (J,)
    n_levels = times.numel()
    per_coord = -0.5 * z.square().sum(-1) - 0.5 * logdet[None, :, None] - 0.5 * n_levels * math.log(2 * math.pi)
    return per_coord.sum(-1)


def trajectory_log_prob(mixture: GaussianMixture, levels: Tensor, times: Tensor) -> Tensor:
    """Exact ``log p(x_{t_0}, ..., x_{t_{L-1}})``, ``(B,)``."""
    return torch.logsumexp(component_trajectory_log_prob(mixture, levels, times) + torch.log(mixture.weights), dim=-1)


def trajectory_nll(mixture: GaussianMixture, trajectory: Tensor, times: Tensor) -> Tensor:
    """The optimum of the NTM loss: ``L* = -log p(x_{t_0..t_{K-1}} | x_{t_K})``, ``(B,)`` nats.

    ``trajectory (K + 1, B, D)``, ``times (K + 1,)`` with ``t_K = 1``; since
    ``x_{t_K}`` is independent of the rest, ``L*`` is the marginal NLL of the first K levels.
    """
    num_steps = times.numel() - 1
    return -trajectory_log_prob(mixture, trajectory[:num_steps], times[:num_steps])


def posterior_mean(mixture: GaussianMixture, levels: Tensor, times: Tensor) -> Tensor:
    """Exact ``E[x | x_{t_0}, ..., x_{t_{L-1}}]``, ``(B, D)`` (levels with ``t < 1``)."""
    levels = levels.to(torch.float64)
    times = times.to(torch.float64)
    a = I.alpha(times)
    sigma_inv = torch.linalg.inv(I.trajectory_covariance(times))
    prec_noise = a @ sigma_inv @ a
    data_term = torch.einsum("l,lm,mbd->bd", a, sigma_inv, levels)  # a^T Sigma^-1 X, (B, D)
    prec = 1.0 / mixture.variances + prec_noise  # (J,)
    means = (mixture.means[None] / mixture.variances[None, :, None] + data_term[:, None]) / prec[None, :, None]
    resp = torch.softmax(component_trajectory_log_prob(mixture, levels, times) + torch.log(mixture.weights), dim=-1)
    return (resp[..., None] * means).sum(1)


class GaussianReversePredictor(Predictor):
    """The true reverse conditional ``p(x_s | x_t)`` of Gaussian data ``N(m, v I)`` (§10), as a predictor.

    With the identity transporter this makes the NTM the exact trajectory
    density. ``mean`` is one state's tokens ``(N, d)``.
    """

    def __init__(self, mean: Tensor, variance: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean))
        self.variance = float(variance)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        dtype = torch.promote_types(u_t.dtype, torch.float32)
        t = t.to(dtype).reshape(-1, 1, 1)
        s = s.to(dtype).reshape(-1, 1, 1)
        m = self.mean.to(dtype)
        a, _ = I.transition(s, t)
        var_s = I.alpha(s) ** 2 * self.variance + I.sigma(s) ** 2
        var_t = I.alpha(t) ** 2 * self.variance + I.sigma(t) ** 2
        mu = I.alpha(s) * m + (a * var_s / var_t) * (u_t.to(dtype) - I.alpha(t) * m)
        var = var_s - a**2 * var_s**2 / var_t
        return Gaussian(mu, (0.5 * torch.log(var)).expand_as(mu))


@torch.no_grad()
def oracle_gap(
    model: torch.nn.Module, mixture: GaussianMixture, num_steps: int, num_examples: int = 8192, seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean trajectory NLL of ``model`` and of the exact optimum on fresh mixture data, in bits/dim.

    Both are scored on the same forward trajectories (points as ``(B, D, 1)``
    tokens); ``gap_bpd = model - oracle >= 0`` up to Monte-Carlo error.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    dim = mixture.dim
    model_total, oracle_total, count = 0.0, 0.0, 0
    while count < num_examples:
        n = min(batch_size, num_examples - count)
        x = mixture.sample(n, gen).to(torch.float32)
        times = model.process.times(num_steps, dtype=torch.float32)
        traj = model.process.sample_trajectory(x, times, gen)  # (K+1, n, D) on CPU
        step_nlls = model.step_nlls(traj.unsqueeze(-1).to(device), times.to(device))
        model_total += step_nlls.sum().item()
        oracle_total += trajectory_nll(mixture, traj.to(torch.float64), times.to(torch.float64)).sum().item()
        count += n
    scale = count * num_steps * dim * math.log(2)
    model_bpd, oracle_bpd = model_total / scale, oracle_total / scale
    return {"model_bpd": model_bpd, "oracle_bpd": oracle_bpd, "gap_bpd": model_bpd - oracle_bpd, "examples": count}
