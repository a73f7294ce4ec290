"""The Loss contract (:mod:`ntm.losses.base`) as plain checks.

``loss_fn = config.build()``; ``loss_fn(model, x, cond, generator) ->
LossOutput(loss, metrics)`` with ``x`` clean tokens ``(B, N, d)`` and
``cond`` ``(B,)`` labels or ``None``. The checks: ``loss`` is a finite
0-dim float tensor; the same generator seed gives the same loss;
``loss.backward()`` leaves finite gradients and a nonzero gradient on at
least one parameter; every metric is a finite float or 0-dim tensor under a
string key.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ntm.testing._util import check, describe
from ntm.testing.conditions import describe_condition, random_condition
from ntm.testing.models import accepted_model


def _inputs(model, batch: int, seed: int, with_labels: bool):
    dims = model.dims
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, dims.num_tokens, dims.token_dim, generator=gen, dtype=dtype)
    cond = None
    if with_labels and dims.cond_dim:
        cond = random_condition(dims, batch, gen, dtype)  # what NTM.forward hands a loss: an encoded condition
    elif with_labels and dims.num_classes:
        cond = torch.randint(0, dims.num_classes + 1, (batch,), generator=gen)
    return x, cond


def default_loss_model(config, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A tiny perturbed NTM the loss ``config`` accepts (see :func:`ntm.testing.models.accepted_model`)."""
    loss_fn = config.build()

    def attempt(model):
        x, cond = _inputs(model, 2, seed, True)
        loss_fn(model, x, cond, torch.Generator().manual_seed(seed))

    return accepted_model(config, attempt, seed=seed, dtype=dtype)


def check_loss(config, model: torch.nn.Module | None = None, *, batch: int = 4, seed: int = 0) -> None:
    """The Loss contract for ``config`` on ``model`` (default: :func:`default_loss_model`), with and without labels."""
    subject = f"loss {describe(config)}"
    loss_fn = config.build()
    if model is None:
        model = default_loss_model(config, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    for with_labels in (False, True) if model.dims.conditional else (False,):
        where = f"{subject}, {describe_condition(model.dims, with_labels)}"
        x, cond = _inputs(model, batch, seed, with_labels)
        model.zero_grad(set_to_none=True)
        out = loss_fn(model, x, cond, torch.Generator().manual_seed(seed))
        loss = out.loss
        check(isinstance(loss, Tensor) and loss.ndim == 0 and loss.is_floating_point(), where,
              f"loss must be a 0-dim float tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        check(bool(torch.isfinite(loss)), where, f"loss is not finite: {loss.item()}")
        with torch.no_grad():
            repeat = loss_fn(model, x, cond, torch.Generator().manual_seed(seed)).loss
        check(torch.equal(repeat.detach(), loss.detach()), where,
              f"the same generator seed gave losses {loss.item()!r} and {repeat.item()!r}")
        check(isinstance(out.metrics, dict), where, f"metrics must be a dict, got {type(out.metrics).__name__}")
        for key, value in out.metrics.items():
            check(isinstance(key, str), where, f"metric key {key!r} is not a string")
            if isinstance(value, Tensor):
                check(value.ndim == 0, where, f"metric {key!r} is a tensor of shape {tuple(value.shape)}, expected 0-dim")
                value = value.item()
            check(isinstance(value, numbers.Real), where, f"metric {key!r} is {type(value).__name__}, expected a float")
            check(math.isfinite(value), where, f"metric {key!r} is not finite: {value}")
        check(loss.requires_grad, where, "the loss does not depend on any parameter")
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        check(bool(grads), where, "backward() left no gradient on any parameter")
        check(all(bool(torch.isfinite(g).all()) for g in grads), where, "backward() left non-finite gradients")
        check(any(bool(g.abs().max() > 0) for g in grads), where, "every parameter gradient is zero")
    model.zero_grad(set_to_none=True)


__all__ = ["check_loss", "default_loss_model"]
