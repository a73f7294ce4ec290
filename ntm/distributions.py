"""The distributions a predictor returns over ``u_s``, and their exact NLLs (one place).

Every predictor head returns a :class:`Distribution`: a batch of distributions
over states ``(N, d)``, with leading (level and batch) dimensions in front.
Consumers use the interface only: ``nll_sum`` (the loss, score denoising),
``sample`` (ancestral sampling), ``mean`` (the finetuning alignment), ``map``
and ``cat`` over the leading dimensions (splitting levels, guidance
branches). :class:`Gaussian` is the diagonal Gaussian of docs/math.md §5;
:class:`Mixture` is a mixture of diagonal Gaussians over the whole state with
one component index per example (§12); :class:`LogisticMixture` is a mixture of
logistics per coordinate (§12).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)

D = TypeVar("D", bound="Distribution")


class Distribution(ABC):
    """A batch of distributions over states; its parameters are tensors sharing the leading dimensions.

    Subclasses are dataclasses whose fields are the parameter tensors (so
    :meth:`map` and :meth:`cat` work field by field).
    """

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The shape of one draw: leading dimensions, then the state's ``(N, d)``."""

    @abstractmethod
    def nll_sum(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        """``-log p(x)`` in nats, summed over every dimension after the first ``batch_dims`` (float32 or wider).

        ``x`` has :attr:`shape`; ``batch_dims`` counts its leading dimensions (``(K, B)``: 2).
        """

    @abstractmethod
    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """One draw of :attr:`shape`; ``temperature`` scales the Gaussian noise (docs/math.md §6)."""

    @property
    @abstractmethod
    def mean(self) -> Tensor:
        """The mean, of :attr:`shape`."""

    @abstractmethod
    def param_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The shape each parameter tensor has when draws have ``shape`` (what a conformance check expects)."""

    def params(self) -> dict[str, Tensor]:
        """The parameter tensors by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def map(self: D, fn: Callable[[Tensor], Tensor]) -> D:
        """Apply ``fn`` to every parameter tensor; ``fn`` acts on the leading dimensions (reshape, index, ...)."""
        return type(self)(**{name: fn(value) for name, value in self.params().items()})

    @classmethod
    def cat(cls: type[D], parts: Sequence[D], dim: int = 0) -> D:
        """Concatenate along a leading dimension ``dim``."""
        names = list(parts[0].params())
        return cls(**{name: torch.cat([p.params()[name] for p in parts], dim) for name in names})


@dataclasses.dataclass
class Gaussian(Distribution):
    """Diagonal Gaussian ``N(mu, exp(log_sigma)^2)``; tensors share one shape."""

    mu: Tensor
    log_sigma: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mu.shape)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    @property
    def mean(self) -> Tensor:
        return self.mu

    def nll(self, x: Tensor) -> Tensor:
        """Elementwise ``-log N(x; mu, sigma^2)`` in nats, computed in float32 or wider."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        z = (x.to(dtype) - self.mu.to(dtype)) * torch.exp(-self.log_sigma.to(dtype))
        return 0.5 * z.square() + self.log_sigma.to(dtype) + 0.5 * LOG_2PI

    def nll_sum(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        return sum_except_batch(self.nll(x), batch_dims)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(self.mu.shape, dtype=self.mu.dtype, device=self.mu.device, generator=generator)
        return self.mu + self.sigma * temperature * z

    def param_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        return {"mu": tuple(shape), "log_sigma": tuple(shape)}


@dataclasses.dataclass
class Mixture(Distribution):
    """``sum_j softmax(logits)_j N(mu_j, exp(log_sigma_j)^2)`` over the WHOLE state (docs/math.md §12).

    One component index per example, shared by all its tokens. ``mu`` and
    ``log_sigma`` are ``(*lead, M, *event)``, ``logits`` ``(*lead, M)``: the
    component axis sits right after the leading dimensions, so :meth:`map`'s
    ``fn`` sees the same leading dimensions in every field.
    """

    mu: Tensor
    log_sigma: Tensor
    logits: Tensor

    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def _lead(self) -> int:
        return self.logits.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.logits.shape[:-1]) + tuple(self.mu.shape[self.logits.ndim :])

    def components(self) -> Gaussian:
        """The component Gaussians, ``(*lead, M, *event)``."""
        return Gaussian(self.mu, self.log_sigma)

    def log_weights(self) -> Tensor:
        """``log softmax(logits)``, ``(*lead, M)``, in float32 or wider."""
        return torch.log_softmax(self.logits.to(torch.promote_types(self.logits.dtype, torch.float32)), dim=-1)

    def component_nll_sums(self, x: Tensor) -> Tensor:
        """``-log N(x; mu_j, sigma_j^2)`` summed over the state, ``(*lead, M)``."""
        lead = self._lead
        return sum_except_batch(self.components().nll(x.unsqueeze(lead)), lead + 1)

    def nll_sum(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        if batch_dims != self._lead:
            raise ValueError(f"a mixture with {self._lead} leading dims sums over the rest; got batch_dims={batch_dims}")
        return -torch.logsumexp(self.log_weights() - self.component_nll_sums(x), dim=-1)

    def _select(self, tensor: Tensor, index: Tensor) -> Tensor:
        """``tensor[..., index, ...]`` along the component axis, one component per leading index."""
        lead = self._lead
        event = tensor.shape[lead + 1 :]
        idx = index.reshape(*index.shape, 1, *([1] * len(event))).expand(*index.shape, 1, *event)
        return tensor.gather(lead, idx).squeeze(lead)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """The component from the weights (inverse CDF of one uniform per example), then its Gaussian at
        ``temperature``; the weights are not tempered."""
        weights = self.log_weights().exp()
        uniform = torch.rand(weights.shape[:-1], dtype=weights.dtype, device=weights.device, generator=generator)
        index = (weights.cumsum(-1) <= uniform[..., None]).sum(-1).clamp(max=self.num_components - 1)
        chosen = Gaussian(self._select(self.mu, index), self._select(self.log_sigma, index))
        return chosen.sample(temperature, generator)

    @property
    def mean(self) -> Tensor:
        lead = self._lead
        weights = self.log_weights().exp()
        weights = weights.reshape(*weights.shape, *([1] * (self.mu.ndim - lead - 1)))
        return (weights.to(self.mu.dtype) * self.mu).sum(lead)

    def param_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        event = self.mu.ndim - self.logits.ndim
        lead = tuple(shape[: len(shape) - event])
        components = (*lead, self.num_components, *tuple(shape[len(shape) - event :]))
        return {"mu": components, "log_sigma": components, "logits": (*lead, self.num_components)}


@dataclasses.dataclass
class LogisticMixture(Distribution):
    """``sum_j softmax(logits)_j Logistic(loc_j, exp(log_scale_j))`` for EVERY coordinate on its own (docs/math.md §12).

    A continuous density (not discretised); coordinates are independent, each with its own component weights.
    The three tensors are ``(*shape, M)``: the component axis is last, so :meth:`map`'s ``fn`` sees the same
    leading dimensions in every field. A logistic of scale ``s`` has variance ``s^2 pi^2 / 3``.
    """

    loc: Tensor
    log_scale: Tensor
    logits: Tensor

    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.loc.shape[:-1])

    def log_weights(self) -> Tensor:
        """``log softmax(logits)`` over the components, ``(*shape, M)``, in float32 or wider."""
        return torch.log_softmax(self.logits.to(torch.promote_types(self.logits.dtype, torch.float32)), dim=-1)

    def nll(self, x: Tensor) -> Tensor:
        """Elementwise ``-log p(x)`` in nats, of :attr:`shape`, computed in float32 or wider.

        Component ``j``: ``log p_j = -z - log s_j - 2 softplus(-z)`` with ``z = (x - loc_j) / s_j`` (stable for
        every ``z``); the mixture is their log-sum-exp with the log-weights.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        log_scale = self.log_scale.to(dtype)
        z = (x.to(dtype).unsqueeze(-1) - self.loc.to(dtype)) * torch.exp(-log_scale)
        log_p = -z - log_scale - 2.0 * torch.nn.functional.softplus(-z)
        return -torch.logsumexp(self.log_weights().to(dtype) + log_p, dim=-1)

    def nll_sum(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        return sum_except_batch(self.nll(x), batch_dims)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Per coordinate: the component from the weights (inverse CDF of one uniform), then
        ``loc_j + temperature s_j logit(v)`` with a second uniform ``v``: the temperature scales the chosen
        logistic's scale (its standard deviation), the weights are not tempered, as for :class:`Mixture`."""
        dtype, device = self.loc.dtype, self.loc.device
        weights = self.log_weights().exp()
        uniform = torch.rand(self.shape, dtype=weights.dtype, device=device, generator=generator)
        index = (weights.cumsum(-1) <= uniform[..., None]).sum(-1, keepdim=True).clamp(max=self.num_components - 1)
        loc = self.loc.gather(-1, index).squeeze(-1)
        scale = self.log_scale.gather(-1, index).squeeze(-1).exp()
        eps = torch.finfo(dtype).eps
        v = torch.rand(self.shape, dtype=dtype, device=device, generator=generator).clamp(eps, 1 - eps)
        return loc + scale * temperature * (torch.log(v) - torch.log1p(-v))

    @property
    def mean(self) -> Tensor:
        return (self.log_weights().exp().to(self.loc.dtype) * self.loc).sum(-1)

    @property
    def variance(self) -> Tensor:
        """``sum_j w_j (s_j^2 pi^2 / 3 + loc_j^2) - mean^2``, of :attr:`shape`."""
        weights = self.log_weights().exp().to(self.loc.dtype)
        second = (weights * ((2.0 * self.log_scale).exp() * (math.pi**2 / 3) + self.loc.square())).sum(-1)
        return second - self.mean.square()

    def param_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        full = (*tuple(shape), self.num_components)
        return {"loc": full, "log_scale": full, "logits": full}


def sum_except_batch(x: Tensor, batch_dims: int = 1) -> Tensor:
    """Sum over every dimension after the first ``batch_dims``."""
    return x.flatten(batch_dims).sum(-1)


__all__ = ["LOG_2PI", "Distribution", "Gaussian", "LogisticMixture", "Mixture", "sum_except_batch"]
