"""Spline TarFlow: TarFlow's causal AR blocks with monotone rational-quadratic spline transforms.

The blocks, scan orders, start token, conditioning and the three inverses
(KV-cached sequential, Jacobi, naive) are TarFlow's
(:class:`~ntm.transporters.tarflow.CausalARBlock`); only the elementwise map
of each value differs. With ``affine=True`` (default) value ``x`` of token
``i`` is mapped

    z = (x - mu) * exp(-a),    u = s(z),    log du/dx = -a + log s'(z)

with ``(mu, a)`` TarFlow's shift and (soft-clipped) log-scale and ``s`` a
monotone rational-quadratic spline (Durkan et al., 2019, "Neural Spline
Flows"), all parameters read from the causal transformer over the tokens
before ``i``. The affine map comes *first* so that each value reaches the
spline's fixed window ``[-B, B]`` standardised: the bins sit where the
conditional's mass is, whatever the level's scale (``x_t`` shrinks and
grows with ``t``) and wherever the prefix puts its mean. With
``affine=False`` the spline reads ``x`` itself.

The spline, ``K = num_bins`` bins on ``[-B, B]`` (``B = bound``), the identity outside
--------------------------------------------------------------------------------------

Knots ``-B = x_0 < ... < x_K = B`` and ``-B = y_0 < ... < y_K = B`` come
from unconstrained logits ``theta^w, theta^h`` (``K`` each: the read-out
divided by ``sqrt(width)``, as in the NSF reference code, so that bin sizes
move gently: unscaled, read-outs of size 1.5 in a randomly perturbed block
already gave interior slopes near ``e^-5``, and round trips that lose 5
digits), soft-clipped (below), through a softmax with a minimum bin size
``m_b`` (a fraction of the window)::

    w_k = 2B * (m_b + (1 - K m_b) softmax(theta^w)_k),   x_k = -B + w_0 + ... + w_{k-1}

(``y_k``, ``h_k`` likewise from ``theta^h``; the last knot is set to ``B``
exactly). Knot derivatives are ``delta_0 = delta_K = 1`` (so the slope
matches the identity tails at ``+-B``: the map and its derivative are
continuous) and, from ``K - 1`` soft-clipped logits ``theta^d``, with a minimum ``m_d``::

    delta_k = m_d + softplus(theta^d_k + c),   c = log(e^{1 - m_d} - 1)   (k = 1 .. K-1)

evaluated as ``1 + log1p(q expm1(theta^d_k))``, ``q = 1 - e^{-(1 - m_d)}``
(the same number; exactly 1 at ``theta^d_k = 0`` in floating point).
Zero logits therefore give equal bins, ``y_k = x_k`` and unit derivatives:
the zero-initialised read-out makes every block exactly the identity.

Bounded slopes. Like TarFlow's log-scale, the logits first pass through
``c tanh(theta / c)``: the (scaled) size logits with ``c_s = size_clip``
(0.4), the derivative logits with ``c_d = derivative_clip`` (3). With
logits within ``+-c_s``, ``K softmax_k`` lies within ``e^{+-2 c_s}`` (the
minimum bin size mixes it with 1, which keeps it there), so every bin slope
``s_k = h_k / w_k`` lies within ``e^{+-4 c_s}`` (``e^{+-1.6}``), whatever
``K``; interior derivatives lie in
``[m_d + softplus(c - c_d), m_d + softplus(c + c_d)]``, ``[0.083, 3.57]`` at
the defaults. Inside bin ``k`` the slope (next paragraph, in another form)
is ``s^2 N / D'^2`` with ``N = delta_{k+1} xi^2 + 2 s xi (1 - xi) + delta_k (1 - xi)^2``
and ``D' = s + (delta_k + delta_{k+1} - 2 s) xi (1 - xi)``, both weighted
means of ``delta_k, delta_{k+1}, s``, so it is bounded too: ``log dy/dx`` stays in ``[-3.90, 2.28]`` at the defaults
(``[-4.65, 2.68]`` at ``c_s = 0.5``, ``[-12.6, 6.7]`` at ``c_s = 1.5``), and
a block's total log-slope, the affine's ``(-3, 3)`` included, in
``(-6.9, 5.3)``. Why: at random weights of scale 0.3 the unclipped read-outs
reached bin slopes ``1.6e-3 .. 450`` and derivatives ``1e-3 .. 30``, local
slopes of ``e^{-13.5}``; the inverse of an AR block moves ``x_i`` by
``1 / slope`` times any error in the spline's knots, and the knots of token
``i`` are read from the tokens before it, so each token multiplied the
previous one's error by about 3000 (block Jacobian condition number 4e17,
round trips off by 1e2 in float64, and the log-determinant of the composed
Jacobian 18 nats off by LU round-off, although each block's own
log-determinant was right). The height logits are the route that matters
(``dx / dy_k = -1 / slope``); widths and derivatives barely do. The size
clip is the one that binds, and it is small because a random read-out sits
at its corners: ``c_s = 1.5`` still allowed slopes of ``e^{-12.6}`` and left
round trips off by 17 (relative) at scale 0.3; ``c_s = 0.4`` holds 1e-9 there.
``size_clip=None, derivative_clip=None`` is the unclipped spline.

In bin ``k`` (``x_k <= x <= x_{k+1}``, found by ``searchsorted``) let
``s = h_k / w_k``, ``xi = (x - x_k) / w_k``,
``beta_0 = delta_k / s - 1``, ``beta_1 = delta_{k+1} / s - 1`` and
``D = 1 + (beta_0 + beta_1) xi (1 - xi)``. The rational-quadratic map
``y = y_k + h_k [s xi^2 + delta_k xi (1 - xi)] / [s + (delta_k + delta_{k+1} - 2s) xi (1 - xi)]``
is evaluated in the equivalent form::

    y = x + (y_k - x_k) + (s - 1)(x - x_k) + h_k xi (1 - xi) [beta_0 (1 - xi) - beta_1 xi] / D

    log dy/dx = log s + log(1 + beta_1 xi^2 + beta_0 (1 - xi)^2) - 2 log D

whose correction terms vanish exactly at the identity (``s = 1``,
``beta = 0``), so a fresh model returns ``u == x`` bit for bit with zero
log-determinant. (``D >= 1/2`` since ``beta > -1``; the middle logarithm is
``log1p`` of ``beta_1 xi^2 + beta_0 (1 - xi)^2`` when that is small, else
the log of the positive sum ``(delta_{k+1} xi^2 + 2 s xi (1 - xi) + delta_k (1 - xi)^2) / s``.)

Inverse: ``y`` is looked up among the ``y_k``; with ``eta = (y - y_k) / h_k``
and ``alpha = beta_0 (1 - eta) - beta_1 eta``, ``xi`` solves
``alpha xi^2 - (1 + alpha) xi + eta = 0`` and is the root in ``[0, 1]``::

    xi = 2 eta / ((1 + alpha) + sqrt((1 + alpha)^2 - 4 alpha eta))     if 1 + alpha >= 0
    xi = ((1 + alpha) - sqrt((1 + alpha)^2 - 4 alpha eta)) / (2 alpha)  otherwise (alpha < -1)

(the same number: each form adds terms of one sign, so neither cancels;
where ``alpha`` is near -1, ``1 + alpha`` itself is formed as
``(delta_k / s)(1 - eta) + (2 - delta_{k+1} / s) eta``), and
``x = x_k + xi w_k``. Outside ``[-B, B]`` both directions are the
identity with log-derivative 0. The spline math runs in float32 or wider,
like TarFlow's affine math.
"""

from __future__ import annotations

import math

import pydantic
import torch
from torch import Tensor

from ntm.spec import ModelDims
from ntm.transporters.base import TRANSPORTERS
from ntm.transporters.tarflow import (
    AffineTransform,
    CausalFlow,
    CausalFlowConfig,
    ComposedTransform,
    ElementwiseTransform,
)

_LARGE_LOGIT = 20.0
"""From this derivative logit on, ``softplus`` is evaluated directly (``expm1`` overflows float32 near 88)."""


class SplineTarFlowConfig(CausalFlowConfig):
    num_bins: int = pydantic.Field(8, ge=2)
    """Spline bins K on [-bound, bound]."""
    bound: float = pydantic.Field(4.0, gt=0)
    """Half-width B of the spline window; outside [-B, B] the spline is the identity."""
    min_bin_size: float = pydantic.Field(1e-3, gt=0)
    """Smallest bin width and height, as a fraction of the window 2B (num_bins * min_bin_size < 1)."""
    min_derivative: float = pydantic.Field(1e-3, gt=0, lt=1)
    """Smallest interior knot derivative."""
    affine: bool = True
    """Shift and scale each value (TarFlow's affine map, soft_clip included) before the spline."""
    size_clip: float | None = pydantic.Field(0.4, gt=0)
    """Bound the (scaled) bin width and height logits to (-c, c) with c*tanh(x/c): bin slopes in (e^-4c, e^4c).
    None: unbounded (unsafe: at random weights the inverse can lose all accuracy)."""
    derivative_clip: float | None = pydantic.Field(3.0, gt=0)
    """Bound the knot-derivative logits to (-c, c) with c*tanh(x/c); None: unbounded."""

    @pydantic.model_validator(mode="after")
    def _bins_fit(self) -> "SplineTarFlowConfig":
        if self.num_bins * self.min_bin_size >= 1:
            raise ValueError(
                f"num_bins * min_bin_size ({self.num_bins} * {self.min_bin_size:g}) must be below 1"
            )
        return self

    def elementwise(self) -> ElementwiseTransform:
        spline = RationalQuadraticSpline(
            self.num_bins, self.bound, self.min_bin_size, self.min_derivative, logit_scale=self.width**-0.5,
            size_clip=self.size_clip, derivative_clip=self.derivative_clip,
        )
        return ComposedTransform(AffineTransform(self.soft_clip), spline) if self.affine else spline

    def build(self, dims: ModelDims) -> "SplineTarFlow":
        return SplineTarFlow(self, dims)

    @classmethod
    def conformance_configs(cls) -> list["SplineTarFlowConfig"]:
        # jacobi_tol=0: the Jacobi inverse runs its N exact sweeps, so all inverses must agree to round-off;
        # the last config's narrow window puts many N(0, 1) inputs in the identity tails
        return [
            cls(width=32, num_heads=2, jacobi_tol=0.0),
            cls(width=32, num_heads=2, num_blocks=3, use_condition=True, jacobi_tol=0.0),
            cls(width=32, num_heads=2, layers_per_block=1, num_bins=5, bound=1.5, affine=False,
                inverse_method="jacobi", jacobi_tol=0.0),
        ]


def _soft_clip(v: Tensor, c: float | None) -> Tensor:
    """``c * tanh(v / c)`` (TarFlow's soft clip), or ``v`` when ``c`` is None."""
    return v if c is None else c * torch.tanh(v / c)


def _knots(logits: Tensor, bound: float, min_size: float) -> Tensor:
    """``(..., K)`` logits -> ``(..., K + 1)`` increasing knots from ``-bound`` to ``bound``."""
    k = logits.shape[-1]
    sizes = min_size + (1 - min_size * k) * torch.softmax(logits, dim=-1)
    inner = 2 * bound * torch.cumsum(sizes, dim=-1)[..., :-1] - bound
    edge = torch.full_like(inner[..., :1], bound)
    return torch.cat([-edge, inner, edge], dim=-1)


def _derivatives(logits: Tensor, min_derivative: float) -> Tensor:
    """``(..., K - 1)`` logits -> ``(..., K + 1)`` knot derivatives, 1 at both ends and at zero logits."""
    excess = 1 - min_derivative  # softplus(c)
    q = -math.expm1(-excess)  # sigmoid(c)
    c = math.log(math.expm1(excess))
    small = torch.log1p(q * torch.expm1(logits.clamp(max=_LARGE_LOGIT)))
    shifted = logits.clamp(min=_LARGE_LOGIT) + c
    large = shifted + torch.log1p(torch.exp(-shifted)) - excess  # softplus(shifted), in full
    inner = 1 + torch.where(logits < _LARGE_LOGIT, small, large)
    one = torch.ones_like(inner[..., :1])
    return torch.cat([one, inner, one], dim=-1)


class RationalQuadraticSpline(ElementwiseTransform):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside (module docstring).

    ``params`` rows: ``num_bins`` width logits, ``num_bins`` height logits,
    ``num_bins - 1`` interior derivative logits (``3 K - 1`` in all); all zero is the identity.
    Width and height logits are multiplied by ``logit_scale`` first; then, when given, size logits pass through
    ``size_clip * tanh(. / size_clip)`` and derivative logits through ``derivative_clip * tanh(. / derivative_clip)``
    (None, the default here: unclipped; :class:`SplineTarFlowConfig` passes its clips).
    """

    def __init__(
        self, num_bins: int, bound: float, min_bin_size: float = 1e-3, min_derivative: float = 1e-3,
        logit_scale: float = 1.0, size_clip: float | None = None, derivative_clip: float | None = None,
    ) -> None:
        self.num_bins, self.bound, self.logit_scale = num_bins, float(bound), logit_scale
        self.size_clip, self.derivative_clip = size_clip, derivative_clip
        self.min_bin_size, self.min_derivative = min_bin_size, min_derivative
        self.num_params = 3 * num_bins - 1

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x knots, y knots, derivatives)``, each ``(..., d, K + 1)``, from ``params`` ``(..., 3K - 1, d)``."""
        k = self.num_bins
        p = params.movedim(-2, -1)
        # widths and heights in one call: equal logits give bit-equal knots (the exact identity at zero)
        size_logits = _soft_clip(p[..., : 2 * k].unflatten(-1, (2, k)) * self.logit_scale, self.size_clip)
        xk, yk = _knots(size_logits, self.bound, self.min_bin_size).unbind(-2)
        return xk, yk, _derivatives(_soft_clip(p[..., 2 * k :], self.derivative_clip), self.min_derivative)

    def _bin(self, v: Tensor, knots: Tensor, xk: Tensor, yk: Tensor, deriv: Tensor) -> tuple[Tensor, ...]:
        """The bin of each ``v`` among ``knots``: ``(x_k, y_k, w_k, h_k, s, delta_k / s, delta_{k+1} / s)``."""
        idx = torch.searchsorted(knots[..., 1:-1].contiguous(), v[..., None].contiguous(), right=True)
        nxt = idx + 1

        def at(t: Tensor, i: Tensor) -> Tensor:
            return t.gather(-1, i).squeeze(-1)

        x0, y0 = at(xk, idx), at(yk, idx)
        w, h = at(xk, nxt) - x0, at(yk, nxt) - y0
        s = h / w
        return x0, y0, w, h, s, at(deriv, idx) / s, at(deriv, nxt) / s

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        b = self.bound
        xk, yk, deriv = self.knots(params)
        inside = (x >= -b) & (x <= b)
        xc = x.clamp(-b, b)
        x0, y0, w, h, s, r0, r1 = self._bin(xc, xk, xk, yk, deriv)
        b0, b1 = r0 - 1, r1 - 1
        xi = ((xc - x0) / w).clamp(0, 1)
        t = xi * (1 - xi)
        den = 1 + (b0 + b1) * t
        y = xc + (y0 - x0) + (s - 1) * (xc - x0) + h * t * (b0 * (1 - xi) - b1 * xi) / den
        m = b1 * xi.square() + b0 * (1 - xi).square()
        positive = r1 * xi.square() + 2 * t + r0 * (1 - xi).square()  # = 1 + m, a sum of positive terms
        log_num = torch.where(m.abs() < 0.5, torch.log1p(m), torch.log(positive))
        log_dy = torch.log(s) + log_num - 2 * torch.log(den)
        return torch.where(inside, y, x), torch.where(inside, log_dy, torch.zeros_like(log_dy))

    def inverse(self, u: Tensor, params: Tensor) -> Tensor:
        b = self.bound
        xk, yk, deriv = self.knots(params)
        inside = (u >= -b) & (u <= b)
        uc = u.clamp(-b, b)
        x0, y0, w, h, _, r0, r1 = self._bin(uc, yk, xk, yk, deriv)
        eta = ((uc - y0) / h).clamp(0, 1)
        alpha = (r0 - 1) * (1 - eta) - (r1 - 1) * eta  # exactly 0 at the identity
        # 1 + alpha; where alpha nears -1, from terms of one sign (r0 (1 - eta) + (2 - r1) eta) so it does not cancel
        p = torch.where(alpha.abs() < 0.5, 1 + alpha, r0 * (1 - eta) + (2 - r1) * eta)
        root = (p.square() - 4 * alpha * eta).clamp(min=0).sqrt()
        plus = p >= 0
        one = torch.ones_like(p)
        # the root in [0, 1] in the form that adds terms of one sign (the other divisor is masked to 1)
        xi = torch.where(
            plus, 2 * eta / torch.where(plus, p + root, one), (p - root) / torch.where(plus, one, 2 * alpha)
        )
        return torch.where(inside, x0 + xi.clamp(0, 1) * w, u)


@TRANSPORTERS.register("spline-tarflow", SplineTarFlowConfig)
class SplineTarFlow(CausalFlow):
    """Causal AR blocks (:class:`~ntm.transporters.tarflow.CausalARBlock`) with rational-quadratic spline maps."""
