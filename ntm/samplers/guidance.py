"""Classifier-free guidance (docs/math.md §6): the batched branch evaluation and the combination rules.

:func:`guided` is the one place that runs a network on the conditional and
null-label branches at once; a sampler passes the rule that combines them:
:func:`guide` (STARFlow's rule on Gaussians) or :func:`guide_velocity`
(flow-matching CFG on velocities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from ntm.distributions import Gaussian


class Splittable(Protocol):
    """A batched result that is not a tensor, e.g. :class:`~ntm.distributions.Gaussian`."""

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Splittable": ...


R = TypeVar("R", bound="Tensor | Splittable")


def guided(
    fn: Callable[..., R],
    inputs: Sequence[Tensor],
    cond: Tensor | None,
    *,
    weight: float,
    num_classes: int,
    rule: Callable[[R, R, float], R],
) -> R:
    """``rule(fn(*inputs, cond), fn(*inputs, null), weight)`` with both branches in ONE call of ``fn``.

    ``inputs`` are batch-first ``(n, ...)`` tensors and ``cond`` is ``(n,)``
    labels; ``fn`` runs once on the doubled batch ``[inputs; inputs]`` with
    labels ``[cond; null]`` (null label = ``num_classes``), and its result (a
    tensor, or anything with ``.map`` such as a Gaussian) is split back into
    the conditional and unconditional halves. With ``weight == 0`` or no
    ``cond``, ``fn(*inputs, cond)`` runs alone on the batch of ``n``.
    Guidance on an unconditional model (``num_classes == 0``) is refused.
    """
    if weight != 0 and num_classes == 0:
        raise ValueError("guidance needs a class-conditional model (num_classes > 0)")
    if weight == 0 or cond is None:
        return fn(*inputs, cond)
    n = cond.shape[0]
    null = torch.full_like(cond, num_classes)
    out = fn(*(torch.cat([z, z]) for z in inputs), torch.cat([cond, null]))
    if isinstance(out, Tensor):
        conditional, unconditional = out[:n], out[n:]
    else:
        conditional, unconditional = out.map(lambda z: z[:n]), out.map(lambda z: z[n:])
    return rule(conditional, unconditional, weight)


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


def guide_velocity(conditional: Tensor, unconditional: Tensor, weight: float) -> Tensor:
    """Flow-matching CFG on velocities ``(B, N, d)``: ``v = v_u + (1 + w)(v_c - v_u)``."""
    return unconditional + (1 + weight) * (conditional - unconditional)


__all__ = ["guide", "guide_velocity", "guided"]
