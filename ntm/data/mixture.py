"""Isotropic Gaussian mixtures as data: parameters, sampling and the data density.

:class:`GaussianMixture` is the data side of the analytic oracle: the mixture
sources of :mod:`ntm.data.toys` sample it and expose it as ``.mixture``. The
oracle math on top of it (exact trajectory densities, the trajectory NLL
optimum, posterior means, ``oracle_gap``) lives in :mod:`eval.oracle`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor


@dataclasses.dataclass
class GaussianMixture:
    """Isotropic components: ``weights (J,)``, ``means (J, D)``, ``variances (J,)`` (float64)."""

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

    # -- constructors -----------------------------------------------------
    @classmethod
    def gaussian(cls, mean: Tensor, variance: float) -> "GaussianMixture":
        """One component ``N(mean, variance I)``."""
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
        """``n`` i.i.d. points, ``(n, D)`` float64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[comp] + self.variances[comp].sqrt()[:, None] * eps

    def log_prob(self, x: Tensor) -> Tensor:
        """Data log-density ``log p(x)``, ``(B, D)`` -> ``(B,)``."""
        x = x.to(torch.float64)
        sq = (x[:, None, :] - self.means[None]).square().sum(-1)  # (B, J)
        logp = -0.5 * sq / self.variances - 0.5 * self.dim * torch.log(2 * math.pi * self.variances)
        return torch.logsumexp(logp + torch.log(self.weights), dim=-1)


__all__ = ["GaussianMixture"]
