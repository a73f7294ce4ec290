"""Output heads: network outputs -> the predictor's distribution over ``u_s`` (shared by the transformer predictors).

A head declares how many raw outputs per token it reads (:attr:`Head.raw_dim`,
the size of the network's zero-initialised final layer) and turns them into a
:class:`~ntm.distributions.Distribution`. Heads register in ``HEADS``; the
transformer predictors' ``head`` slot holds one (``gaussian`` by default).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import pydantic
import torch
from torch import Tensor, nn

from ntm.distributions import Distribution, Gaussian, Mixture
from ntm.forward import interpolant as I
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig, Registry

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


class Head(nn.Module, ABC):
    """``(raw (B, N, raw_dim), u_t (B, N, d), t (B,), s (B,)) -> Distribution`` over ``u_s`` ``(B, N, d)``."""

    distribution: ClassVar[type[Distribution]] = Distribution
    """The class of what :meth:`forward` returns (samplers and checks ask for capabilities by class)."""

    def __init__(self, raw_dim: int) -> None:
        super().__init__()
        self.raw_dim = raw_dim
        """Raw network outputs per token that the head reads."""

    @abstractmethod
    def forward(self, raw: Tensor, u_t: Tensor, t: Tensor, s: Tensor) -> Distribution: ...


class HeadConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Head:  # pragma: no cover - interface
        raise NotImplementedError

    def distribution_class(self) -> type[Distribution]:
        """The distribution class the built head returns (from its registry entry)."""
        return HEADS.get(HEADS.name_of(self)).cls.distribution


HEADS: Registry[Head] = Registry("head", base=Head)


class GaussianHeadConfig(HeadConfig):
    parameterization: Parameterization = "posterior"
    """'posterior': outputs x_hat and a log-scale correction read through the §4 posterior; 'direct': mu, log_sigma."""
    sigma: Literal["learned", "posterior"] = "learned"
    """'posterior' fixes sigma to the §4 posterior's (needs parameterization 'posterior'): the DDPM-style ablation."""

    @pydantic.model_validator(mode="after")
    def _sigma_needs_posterior(self) -> "GaussianHeadConfig":
        if self.sigma == "posterior" and self.parameterization != "posterior":
            raise ValueError("sigma 'posterior' needs parameterization 'posterior'")
        return self

    def build(self, dims: ModelDims) -> "GaussianHead":
        return GaussianHead(self, dims)


@HEADS.register("gaussian", GaussianHeadConfig)
class GaussianHead(Head):
    """The diagonal Gaussian of §5: ``2d`` raw outputs per token (:func:`gaussian_head`)."""

    distribution = Gaussian

    def __init__(self, config: GaussianHeadConfig, dims: ModelDims) -> None:
        super().__init__(2 * dims.token_dim)
        self.config = config

    def forward(self, raw: Tensor, u_t: Tensor, t: Tensor, s: Tensor) -> Gaussian:
        return gaussian_head(raw, u_t, t, s, self.config.parameterization, self.config.sigma)


class ComponentsHeadConfig(HeadConfig):
    """A head with ``num_components`` (>= 1, refused in one line otherwise): the mixture heads."""

    num_components: int = 4
    """M >= 1 mixture components."""

    @pydantic.field_validator("num_components")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"a mixture needs at least one component (num_components = {value})")
        return value


class MixtureHeadConfig(ComponentsHeadConfig):
    num_components: int = 4
    """M >= 1: Gaussian components over the whole state, one component index shared by all tokens (§12)."""

    def build(self, dims: ModelDims) -> "MixtureHead":
        return MixtureHead(self, dims)


@HEADS.register("mixture", MixtureHeadConfig)
class MixtureHead(Head):
    """M diagonal Gaussians over the whole state (docs/math.md §12): ``M (2d + 1)`` raw outputs per token.

    Per token the raw outputs are ``x_hat_1..M`` (``M d``), ``delta_1..M`` (``M d``) and one logit contribution
    per component (``M``). Component ``j`` is read like the Gaussian head's posterior parameterisation,
    ``mu_j = c_x g_j x_hat_j + c_t u_t``, ``log sigma_j = log sigma_tilde + delta_j``, with a fixed read-out gain
    ``g_j = 1 + (j - (M - 1)/2) / M`` (``g = 1`` for ``M = 1``): from the zero-initialised final layer the
    components are equal and the weights uniform (the Gaussian head's density), and the gains make their
    updates differ, without which identical components would receive identical updates forever. The logits
    of an example are the sum over its tokens of their contributions.
    """

    distribution = Mixture

    def __init__(self, config: MixtureHeadConfig, dims: ModelDims) -> None:
        m = config.num_components
        super().__init__(m * (2 * dims.token_dim + 1))
        self.config = config

    def forward(self, raw: Tensor, u_t: Tensor, t: Tensor, s: Tensor) -> Mixture:
        m = self.config.num_components
        d = u_t.shape[-1]
        dtype = torch.promote_types(u_t.dtype, torch.float32)
        raw = raw.to(dtype)
        x_hat = raw[..., : m * d].unflatten(-1, (m, d)).movedim(-2, 1)  # (B, M, N, d)
        delta = raw[..., m * d : 2 * m * d].unflatten(-1, (m, d)).movedim(-2, 1)
        logits = raw[..., 2 * m * d :].sum(1)  # (B, M): per-token contributions summed over tokens
        gain = 1 + (torch.arange(m, dtype=dtype, device=raw.device) - (m - 1) / 2) / m
        t_ = t.to(dtype).reshape(-1, 1, 1, 1)
        s_ = s.to(dtype).reshape(-1, 1, 1, 1)
        c_x, c_t, var = I.posterior(s_, t_)
        mu = c_x * (gain.reshape(m, 1, 1) * x_hat) + c_t * u_t.to(dtype)[:, None]
        return Mixture(mu, 0.5 * torch.log(var) + delta, logits)


__all__ = [
    "HEADS", "ComponentsHeadConfig", "GaussianHead", "GaussianHeadConfig", "Head", "HeadConfig", "MixtureHead", "MixtureHeadConfig",
    "Parameterization", "gaussian_head",
]
