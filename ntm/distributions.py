"""The diagonal Gaussian every predictor returns, and its exact NLL (one place)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass
class Gaussian:
    """Diagonal Gaussian ``N(mu, exp(log_sigma)^2)``; tensors share one shape."""

    mu: Tensor
    log_sigma: Tensor

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def nll(self, x: Tensor) -> Tensor:
        """Elementwise ``-log N(x; mu, sigma^2)`` in nats, computed in float32 or wider."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        z = (x.to(dtype) - self.mu.to(dtype)) * torch.exp(-self.log_sigma.to(dtype))
        return 0.5 * z.square() + self.log_sigma.to(dtype) + 0.5 * LOG_2PI

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(self.mu.shape, dtype=self.mu.dtype, device=self.mu.device, generator=generator)
        return self.mu + self.sigma * temperature * z

    def map(self, fn) -> "Gaussian":
        """Apply ``fn`` to both tensors (reshape, index, cat, ...)."""
        return Gaussian(fn(self.mu), fn(self.log_sigma))

    @staticmethod
    def cat(parts: list["Gaussian"], dim: int = 0) -> "Gaussian":
        return Gaussian(torch.cat([p.mu for p in parts], dim), torch.cat([p.log_sigma for p in parts], dim))


def sum_except_batch(x: Tensor, batch_dims: int = 1) -> Tensor:
    """Sum over every dimension after the first ``batch_dims``."""
    return x.flatten(batch_dims).sum(-1)
