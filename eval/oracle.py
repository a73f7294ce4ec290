"""Analytic oracles: Gaussian and Gaussian-mixture data with exact trajectory densities (ntm-math §10).

For ``x ~ sum_j pi_j N(m_j, v_j I)`` the Markov trajectory is, per component,
jointly Gaussian: per coordinate, levels ``0..L-1`` have mean ``alpha_i m`` and
covariance ``C = v alpha alpha^T + Sigma`` (Sigma of §3). Everything here is
exact; tests and benchmarks measure models against it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ntm.distributions import Gaussian
from ntm.forward import interpolant as I
from ntm.predictors.base import Predictor


@dataclasses.dataclass
class GaussianMixture:
    """Isotropic components: ``weights (J,)``, ``means (J, D)``, ``variances (J,)``."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.variances = torch.as_tensor(self.variances, dtype=torch.float64)
        if self.means.ndim != 2 or self.weights.shape != (self.means.shape[0],) or self.variances.shape != self.weights.shape:
            raise ValueError("weights (J,), means (J, D) and variances (J,) must agree")
        if (self.variances <= 0).any() or (self.weights < 0).any() or abs(self.weights.sum().item() - 1) > 1e-9:
            raise ValueError("variances must be > 0 and weights a probability vector")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def gaussian(cls, mean: Tensor, variance: float) -> "GaussianMixture":
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        return cls(torch.ones(1, dtype=torch.float64), mean, torch.tensor([float(variance)], dtype=torch.float64))

    @classmethod
    def ring(cls, num_components: int = 8, radius: float = 2.0, std: float = 0.2) -> "GaussianMixture":
        """``num_components`` equal-weight 2-D Gaussians on a circle (the 8-gaussians toy)."""
        angles = torch.arange(num_components, dtype=torch.float64) * (2 * math.pi / num_components)
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
        f64 = torch.float64
        return cls(torch.full((num_components,), 1.0 / num_components, dtype=f64), means, torch.full((num_components,), std**2, dtype=f64))

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist()}

    # -- data -------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[comp] + self.variances[comp].sqrt()[:, None] * eps

    def log_prob(self, x: Tensor) -> Tensor:
        """Data log-density ``log p(x)``, ``(B, D)`` -> ``(B,)``."""
        x = x.to(torch.float64)
        sq = (x[:, None, :] - self.means[None]).square().sum(-1)  # (B, J)
        logp = -0.5 * sq / self.variances - 0.5 * self.dim * torch.log(2 * math.pi * self.variances)
        return torch.logsumexp(logp + torch.log(self.weights), dim=-1)

    # -- trajectories -----------------------------------------------------
    def _level_moments(self, times: Tensor) -> tuple[Tensor, Tensor]:
        """Per-coordinate ``alpha (L,)`` and per-component covariance ``C (J, L, L)``."""
        times = times.to(torch.float64)
        a = I.alpha(times)
        sigma = I.trajectory_covariance(times)
        return a, self.variances[:, None, None] * a[None, :, None] * a[None, None, :] + sigma[None]

    def component_trajectory_log_prob(self, levels: Tensor, times: Tensor) -> Tensor:
        """``log p_j(levels)`` for each component, ``levels (L, B, D)`` at ``times (L,)`` -> ``(B, J)``."""
        levels = levels.to(torch.float64)
        a, cov = self._level_moments(times)
        chol = torch.linalg.cholesky(cov)  # (J, L, L)
        resid = levels.permute(1, 2, 0)[:, None] - a * self.means[None, :, :, None]  # (B, J, D, L)
        z = torch.linalg.solve_triangular(chol[None, :, None], resid.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (J,)
        n_levels = times.numel()
        per_coord = -0.5 * z.square().sum(-1) - 0.5 * logdet[None, :, None] - 0.5 * n_levels * math.log(2 * math.pi)
        return per_coord.sum(-1)

    def trajectory_log_prob(self, levels: Tensor, times: Tensor) -> Tensor:
        """Exact ``log p(x_{t_0}, ..., x_{t_{L-1}})``, ``(B,)``."""
        return torch.logsumexp(self.component_trajectory_log_prob(levels, times) + torch.log(self.weights), dim=-1)

    def trajectory_nll(self, trajectory: Tensor, times: Tensor) -> Tensor:
        """The optimum of the NTM loss: ``L* = -log p(x_{t_0..t_{K-1}} | x_{t_K})``, ``(B,)`` nats.

        ``trajectory (K + 1, B, D)``, ``times (K + 1,)`` with ``t_K = 1``; since
        ``x_{t_K}`` is independent of the rest, ``L*`` is the marginal NLL of the first K levels.
        """
        num_steps = times.numel() - 1
        return -self.trajectory_log_prob(trajectory[:num_steps], times[:num_steps])

    def posterior_mean(self, levels: Tensor, times: Tensor) -> Tensor:
        """Exact ``E[x | x_{t_0}, ..., x_{t_{L-1}}]``, ``(B, D)`` (levels with ``t < 1``)."""
        levels = levels.to(torch.float64)
        times = times.to(torch.float64)
        a = I.alpha(times)
        sigma_inv = torch.linalg.inv(I.trajectory_covariance(times))
        prec_noise = a @ sigma_inv @ a
        data_term = torch.einsum("l,lm,mbd->bd", a, sigma_inv, levels)  # a^T Sigma^-1 X, (B, D)
        prec = 1.0 / self.variances + prec_noise  # (J,)
        means = (self.means[None] / self.variances[None, :, None] + data_term[:, None]) / prec[None, :, None]
        resp = torch.softmax(self.component_trajectory_log_prob(levels, times) + torch.log(self.weights), dim=-1)
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
        oracle_total += mixture.trajectory_nll(traj.to(torch.float64), times.to(torch.float64)).sum().item()
        count += n
    scale = count * num_steps * dim * math.log(2)
    model_bpd, oracle_bpd = model_total / scale, oracle_total / scale
    return {"model_bpd": model_bpd, "oracle_bpd": oracle_bpd, "gap_bpd": model_bpd - oracle_bpd, "examples": count}
