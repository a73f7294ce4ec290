"""The interpolant and the Markov trajectory's closed forms (docs/math.md §1, §3, §4).

Every formula of the forward process lives here, as functions of scalar or
broadcastable times. ``t = 0`` is data, ``t = 1`` is noise.
"""

from __future__ import annotations

import torch
from torch import Tensor


def alpha(t: Tensor) -> Tensor:
    """Signal coefficient ``alpha_t = 1 - t``."""
    return 1.0 - t


def sigma(t: Tensor) -> Tensor:
    """Noise coefficient ``sigma_t = t``."""
    return t


def transition(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``x_t = a x_s + b xi`` for ``s < t``: returns ``(a, b^2)`` (§3).

    ``a = alpha_t / alpha_s`` and ``b^2 = sigma_t^2 - a^2 sigma_s^2``, so every
    level keeps the marginal ``N(alpha_t x, sigma_t^2)``.
    """
    a = alpha(t) / alpha(s)
    b2 = sigma(t) ** 2 - a**2 * sigma(s) ** 2
    return a, b2.clamp_min(0.0)


def posterior(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q(x_s | x_t, x) = N(c_x x + c_t x_t, var)``: returns ``(c_x, c_t, var)`` (§4)."""
    a, b2 = transition(s, t)
    var_t = sigma(t) ** 2
    c_x = b2 / var_t * alpha(s)
    c_t = a * sigma(s) ** 2 / var_t
    var = sigma(s) ** 2 * b2 / var_t
    return c_x, c_t, var


def trajectory_covariance(times: Tensor) -> Tensor:
    """Per-coordinate ``Cov(x_{t_i}, x_{t_j} | x)`` for the given levels (§3).

    ``Sigma_ij = (alpha_{t_j} / alpha_{t_i}) sigma_{t_i}^2`` for ``i <= j``;
    ``times`` is 1-D, increasing, with every entry below 1 except possibly the last.
    """
    ti, tj = times[:, None], times[None, :]
    lo, hi = torch.minimum(ti, tj), torch.maximum(ti, tj)
    ratio = torch.where(lo == hi, torch.ones_like(lo), alpha(hi) / alpha(lo).clamp_min(torch.finfo(lo.dtype).tiny))
    return ratio * sigma(lo) ** 2


def velocity_to_xhat(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """``x_hat = x_t - t v`` for a velocity ``v = eps - x`` (§1)."""
    return x_t - t * v
