"""Read-out of a Gaussian from network outputs (shared by the transformer predictors)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ntm.distributions import Gaussian
from ntm.forward import interpolant as I

Parameterization = Literal["posterior", "direct"]


def gaussian_head(
    raw: Tensor, u_t: Tensor, t: Tensor, s: Tensor, parameterization: Parameterization,
    sigma: Literal["learned", "posterior"] = "learned",
) -> Gaussian:
    """``raw`` ``(B, N, 2d)`` -> Gaussian over ``u_s``.

    ``direct``: ``mu, log_sigma`` are the raw outputs. ``posterior``: the raw
    outputs are an ``x_hat`` and a log-scale correction, read through the
    Gaussian posterior of §4 as if ``u_t`` were ``x_t``
    (``mu = c_x x_hat + c_t u_t``, ``log_sigma = log sigma_tilde + delta``), so a
    zero-initialised network starts at the posterior of ``x_hat = 0``. ``sigma="posterior"``
    drops the correction: ``sigma = sigma_tilde`` exactly.
    """
    out, delta = raw.chunk(2, dim=-1)
    dtype = torch.promote_types(u_t.dtype, torch.float32)
    out, delta = out.to(dtype), delta.to(dtype)
    if parameterization == "direct":
        return Gaussian(out, delta)
    t_ = t.to(dtype).reshape(-1, 1, 1)
    s_ = s.to(dtype).reshape(-1, 1, 1)
    c_x, c_t, var = I.posterior(s_, t_)
    mu = c_x * out + c_t * u_t.to(dtype)
    if sigma == "posterior":
        delta = torch.zeros_like(delta)
    return Gaussian(mu, 0.5 * torch.log(var) + delta)
