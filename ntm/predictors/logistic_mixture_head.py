"""The ``logistic-mixture`` head: a mixture of M logistics for every token and channel (docs/math.md §12)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ntm.distributions import LogisticMixture
from ntm.forward import interpolant as I
from ntm.predictors.heads import HEADS, ComponentsHeadConfig, Head
from ntm.spec import ModelDims

LOG_SCALE_MIN, LOG_SCALE_MAX = -10.0, 7.0
"""Soft bounds of the components' log-scales (:func:`soft_clamp`): scales stay within about ``(4.5e-5, 1100)``."""

LOG_GAUSSIAN_TO_LOGISTIC = 0.5 * math.log(3.0) - math.log(math.pi)
"""``log(sqrt(3) / pi)``: the log-scale of the logistic with the variance of a unit Gaussian."""


def soft_clamp(x: Tensor, low: float = LOG_SCALE_MIN, high: float = LOG_SCALE_MAX) -> Tensor:
    """A smooth, increasing soft clamp: ``high - softplus(high - x)``, then ``low + softplus(. - low)``.

    The result is above ``low`` and below ``high + e^-(high - low)``; a few units from both bounds it is ``x`` up to
    about ``e^-(distance to the nearer bound)``."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


def component_offsets(m: int, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """``o_j = (j - (M - 1)/2) / M`` for ``j = 0..M-1``: fixed, symmetric, within ``(-1/2, 1/2)`` (``0`` for ``M = 1``)."""
    return (torch.arange(m, dtype=dtype, device=device) - (m - 1) / 2) / m


class LogisticMixtureHeadConfig(ComponentsHeadConfig):
    num_components: int = 4
    """M >= 1: logistic components for every token and channel on its own, each with its own weights (§12)."""

    def build(self, dims: ModelDims) -> "LogisticMixtureHead":
        return LogisticMixtureHead(self, dims)


@HEADS.register("logistic-mixture", LogisticMixtureHeadConfig)
class LogisticMixtureHead(Head):
    """M logistics per token and channel (docs/math.md §12): ``3 M d`` raw outputs per token.

    Per token the raw outputs are ``x_hat_1..M``, ``delta_1..M`` and ``logits_1..M`` (``M d`` each). Component
    ``j`` is read through the §4 posterior like the Gaussian head:
    ``loc_j = c_x x_hat_j + c_t u_t + sigma_tilde o_j`` with the fixed offsets ``o_j`` of
    :func:`component_offsets`, and
    ``log s_j = soft_clamp(log sigma_tilde + log(sqrt(3)/pi) + 0.5 log(1 - var(o)) + delta_j)`` with
    ``var(o) = (M^2 - 1) / (12 M^2)`` the offsets' variance under uniform weights. From the zero-initialised final
    layer the weights are uniform and the mixture has the Gaussian head's mean ``c_t u_t`` and variance
    ``sigma_tilde^2`` per coordinate; the offsets make the components' responsibilities, hence their updates,
    differ from the first step on.
    """

    distribution = LogisticMixture

    def __init__(self, config: LogisticMixtureHeadConfig, dims: ModelDims) -> None:
        super().__init__(3 * config.num_components * dims.token_dim)
        self.config = config

    def forward(self, raw: Tensor, u_t: Tensor, t: Tensor, s: Tensor) -> LogisticMixture:
        m = self.config.num_components
        dtype = torch.promote_types(u_t.dtype, torch.float32)
        x_hat, delta, logits = (part.unflatten(-1, (-1, m)) for part in raw.to(dtype).chunk(3, dim=-1))  # (B, N, d, M)
        t_ = t.to(dtype).reshape(-1, 1, 1, 1)
        s_ = s.to(dtype).reshape(-1, 1, 1, 1)
        c_x, c_t, var = I.posterior(s_, t_)
        log_sigma = 0.5 * torch.log(var)
        offsets = component_offsets(m, dtype, raw.device)
        spread = (m * m - 1) / (12 * m * m)
        loc = c_x * x_hat + c_t * u_t.to(dtype)[..., None] + log_sigma.exp() * offsets
        log_scale = soft_clamp(log_sigma + LOG_GAUSSIAN_TO_LOGISTIC + 0.5 * math.log1p(-spread) + delta)
        return LogisticMixture(loc, log_scale, logits)


__all__ = [
    "LOG_GAUSSIAN_TO_LOGISTIC", "LOG_SCALE_MAX", "LOG_SCALE_MIN", "LogisticMixtureHead", "LogisticMixtureHeadConfig",
    "component_offsets", "soft_clamp",
]
