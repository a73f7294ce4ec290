"""Classifier-free guidance (docs/math.md §6): the batched branch evaluation and the combination rules.

:func:`guided` is the one place that runs a network on the conditional and
null branches at once; a sampler passes the rule that combines them:
:func:`guide` (STARFlow's rule on Gaussians) or :func:`guide_velocity`
(flow-matching CFG on velocities). The null branch's condition comes from the
model (:func:`guidance_conditions`): the null label of a class-conditional
model, the learned null of a model with a condition encoder (captions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from ntm.conditioning.condition import Cond, condition_cat, encode_condition
from ntm.distributions import Gaussian


class Splittable(Protocol):
    """A batched result that is not a tensor, e.g. :class:`~ntm.distributions.Gaussian`."""

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Splittable": ...


R = TypeVar("R", bound="Tensor | Splittable")

GAUSSIAN_ONLY = "guidance is defined for the gaussian head only; set --sampler.guidance 0"
"""Why a model whose predictor returns another distribution (a mixture head) cannot be guided (docs/math.md §12)."""

UNCONDITIONAL = ("guidance needs a conditional model (class-conditional, or conditioned on encoded captions); "
                 "this model has no condition")


def null_condition(model: torch.nn.Module, n: int, device: torch.device | None = None) -> Cond:
    """``model.null_condition(n)``; for a model without that method, ``n`` null labels when ``model.dims`` has classes."""
    method = getattr(model, "null_condition", None)
    if method is not None:
        return method(n, device)
    num_classes = model.dims.num_classes
    return torch.full((n,), num_classes, dtype=torch.long, device=device) if num_classes else None


def guidance_conditions(model: torch.nn.Module, cond: Any, n: int, device: torch.device | None = None) -> tuple[Cond, Cond]:
    """``(cond, null)`` for sampling ``n`` examples: the encoded condition and the model's null condition.

    ``cond`` is the sampler's input (``None``, ``(n,)`` labels, ``(n, L)`` token ids, or a Condition), encoded
    once with ``model.encode``. With ``cond=None`` a model with a condition encoder samples from its null
    condition, returned as the very object ``null`` (so :func:`guided` runs one branch), and other models get
    ``None``. ``null`` is ``None`` for a model without any condition.
    """
    null = null_condition(model, n, device)
    if cond is None:
        return (null if getattr(model, "condition_encoder", None) is not None else None), null
    return encode_condition(model, cond, n), null


def guided(
    fn: Callable[..., R],
    inputs: Sequence[Tensor],
    cond: Cond,
    *,
    weight: float,
    rule: Callable[[R, R, float], R],
    null: Cond = None,
    num_classes: int | None = None,
) -> R:
    """``rule(fn(*inputs, cond), fn(*inputs, null), weight)`` with both branches in ONE call of ``fn``.

    ``inputs`` are batch-first ``(n, ...)`` tensors; ``cond`` is the (encoded) condition of the ``n`` examples:
    ``(n,)`` labels or a :class:`~ntm.conditioning.condition.Condition`; ``null`` is the model's null condition
    for the same ``n`` examples (:func:`guidance_conditions` gives both), ``None`` when the model has no
    condition. ``fn`` runs once on the doubled batch ``[inputs; inputs]`` with the condition ``[cond; null]``,
    and its result (a tensor, or anything with ``.map`` such as a Gaussian) is split back into the conditional
    and unconditional halves. With ``weight == 0``, no ``cond``, or ``cond`` being ``null`` itself (sampling a
    model's null condition), ``fn(*inputs, cond)`` runs alone on the batch of ``n``. Guidance on a model
    without any condition (``null`` is ``None``) is refused.

    ``num_classes`` is the earlier interface (labels only): when given instead of ``null``, the null is
    ``num_classes`` labels, or none for ``num_classes == 0``.
    """
    if null is None and num_classes:
        if isinstance(cond, Tensor):
            null = torch.full_like(cond, num_classes)
        elif cond is None:
            null = torch.full((inputs[0].shape[0],), num_classes, dtype=torch.long, device=inputs[0].device)
    if weight != 0 and null is None:
        raise ValueError(UNCONDITIONAL)
    if weight == 0 or cond is None or cond is null:
        return fn(*inputs, cond)
    n = cond.shape[0]
    out = fn(*(torch.cat([z, z]) for z in inputs), condition_cat([cond, null]))
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
    if not (isinstance(conditional, Gaussian) and isinstance(unconditional, Gaussian)):
        raise TypeError(GAUSSIAN_ONLY)
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


__all__ = ["GAUSSIAN_ONLY", "guidance_conditions", "guide", "guide_velocity", "guided", "null_condition"]
