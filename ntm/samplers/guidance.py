"""Classifier-free guidance on Gaussians (ntm-math §6; STARFlow's rule)."""

from __future__ import annotations

import torch

from ntm.distributions import Gaussian


def guide(conditional: Gaussian, unconditional: Gaussian, weight: float) -> Gaussian:
    """Per coordinate, with ``s = min(sigma_c / sigma_u, 1)^2``:

        sigma = sigma_c / sqrt(1 + w - w s)
        mu    = ((1 + w) mu_c - w s mu_u) / (1 + w - w s)

    ``w = 0`` returns the conditional Gaussian unchanged.
    """
    if weight == 0:
        return conditional
    w = weight
    ratio = torch.exp(conditional.log_sigma - unconditional.log_sigma).clamp(max=1.0)
    s = ratio.square()
    denom = 1 + w - w * s
    mu = ((1 + w) * conditional.mu - w * s * unconditional.mu) / denom
    log_sigma = conditional.log_sigma - 0.5 * torch.log(denom)
    return Gaussian(mu, log_sigma)
