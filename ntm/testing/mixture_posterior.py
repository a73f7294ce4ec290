"""A test oracle: the exact reverse conditional of Gaussian-mixture data as a ``mixture`` distribution (§10, §12).

For ``x ~ sum_j pi_j N(m_j, v_j I)`` the reverse conditional of one Markov
step is a mixture over the data components,

    q(x_s | x_t) = sum_j r_j(x_t) q_j(x_s | x_t),
    r_j(x_t) ∝ pi_j N(x_t; alpha_t m_j, (alpha_t^2 v_j + sigma_t^2) I),

with ``q_j`` the Gaussian reverse conditional of component ``j``'s data (§10).
Since the forward levels form a Markov chain, the product of these over the
``K`` steps is the exact trajectory density: with the identity transporter an
NTM built on this predictor reproduces ``eval.oracle.trajectory_nll``.
Not registered (it is built from a data mixture, not a config).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ntm.data.mixture import GaussianMixture
from ntm.distributions import Mixture
from ntm.forward import interpolant as I
from ntm.predictors.base import Predictor


class MixtureReversePredictor(Predictor):
    """``q(x_s | x_t)`` of ``mixture`` data read on ``u_t`` (``(B, N, d)`` tokens of a ``D = N d`` point)."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.register_buffer("weights", mixture.weights.clone())
        self.register_buffer("means", mixture.means.clone())  # (J, D)
        self.register_buffer("variances", mixture.variances.clone())  # (J,)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Mixture:
        dtype = torch.promote_types(u_t.dtype, torch.float32)
        b = u_t.shape[0]
        x_t = u_t.to(dtype).reshape(b, 1, -1)  # (B, 1, D)
        t = t.to(dtype).reshape(-1, 1, 1)
        s = s.to(dtype).reshape(-1, 1, 1)
        m = self.means.to(dtype)[None]  # (1, J, D)
        v = self.variances.to(dtype)[None, :, None]  # (1, J, 1)
        a, _ = I.transition(s, t)
        var_s = I.alpha(s) ** 2 * v + I.sigma(s) ** 2  # (B, J, 1)
        var_t = I.alpha(t) ** 2 * v + I.sigma(t) ** 2
        mu = I.alpha(s) * m + (a * var_s / var_t) * (x_t - I.alpha(t) * m)  # (B, J, D)
        var = var_s - a**2 * var_s**2 / var_t
        dim = x_t.shape[-1]
        log_marginal = (-0.5 * (x_t - I.alpha(t) * m).square() / var_t).sum(-1) \
            - 0.5 * dim * torch.log(2 * math.pi * var_t[..., 0])  # (B, J): log N(x_t; alpha_t m_j, var_t,j I)
        logits = torch.log(self.weights.to(dtype)) + log_marginal
        shape = (b, mu.shape[1], *u_t.shape[1:])
        return Mixture(mu.reshape(shape), (0.5 * torch.log(var)).expand(b, -1, dim).reshape(shape), logits)


__all__ = ["MixtureReversePredictor"]
