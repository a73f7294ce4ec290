"""The Sampler contract (:mod:`ntm.samplers.base`) as plain checks.

``sampler = config.build()``; ``sampler(model, n, cond=None, *,
generator=None, return_trajectory=False) -> SampleOutput``, every setting
(steps, guidance, temperature) living in the config. The checks:

* ``out.x`` is ``(n, N, d)`` and finite; ``out.times`` is 1-D and strictly
  ascending;
* the same generator seed gives identical samples, a different seed different ones;
* with ``return_trajectory=True``, ``x_trajectory`` is ``(len(times), n, N, d)``,
  its entry 0 is ``out.x``, and asking for the trajectory does not change
  the sample drawn with the same seed;
* a sampler that splits batches (``splits_batch``) gives, for rows ``0:1`` and ``1:n`` sampled apart with the
  same seed (``rows=Rows(...)``, the condition's rows), the whole batch's rows;

each without labels and, for a class-conditional model, with labels
``(n,)`` that include the null label ``num_classes``; for a model with a
condition encoder (captions), with an encoded Condition whose last row is the
model's learned null.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ntm.conditioning.condition import Condition
from ntm.samplers.base import Rows
from ntm.testing._util import check, check_tensor, describe, max_abs_diff
from ntm.testing.conditions import random_condition
from ntm.testing.models import MODEL_DIMS, accepted_model


def _labels(model, n: int, seed: int) -> Tensor:
    num_classes = model.dims.num_classes
    cond = torch.randint(0, num_classes + 1, (n,), generator=torch.Generator().manual_seed(seed))
    if n > 1:
        cond[-1] = num_classes
    return cond


def _conditions(model, n: int, seed: int) -> list:
    """``None``, then labels (class-conditional) or an encoded Condition (a model with a condition encoder)."""
    conds: list = [None]
    if getattr(model, "condition_encoder", None) is not None:
        with torch.no_grad():
            null = model.null_condition(1)
        rows = random_condition(model.dims, n - 1, torch.Generator().manual_seed(seed), null.dtype) if n > 1 else None
        conds.append(null if rows is None else Condition.cat([rows.to(null.device), null]))
    elif model.dims.num_classes:
        conds.append(_labels(model, n, seed))
    return conds


def _describe(cond) -> str:
    if cond is None:
        return "cond=None"
    return f"cond={cond.tolist()}" if isinstance(cond, Tensor) else f"cond={cond!r}"


def default_sampler_model(config, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A tiny perturbed NTM (:data:`~ntm.testing.models.MODEL_DIMS`) the sampler ``config`` accepts."""
    sampler = config.build()
    return accepted_model(
        config, lambda m: sampler(m, 2, None, generator=torch.Generator().manual_seed(0)), seed=seed, dtype=dtype
    )


def check_sampler(config, model: torch.nn.Module | None = None, *, n: int = 3, seed: int = 0, tol: float = 1e-7) -> None:
    """The whole Sampler contract for ``config`` on ``model`` (default: :func:`default_sampler_model`).

    ``tol`` bounds ``max |x - x'|`` between a sample and the same-seed sample
    drawn with ``return_trajectory=True`` (decoding a batch of levels may round differently).
    """
    subject = f"sampler {describe(config)}"
    sampler = config.build()
    if model is None:
        model = default_sampler_model(config, seed=seed)
    dims = model.dims
    shape = (n, dims.num_tokens, dims.token_dim)
    for cond in _conditions(model, n, seed):
        where = f"{subject}, {_describe(cond)}"

        def draw(s: int, trajectory: bool = False):
            return sampler(model, n, cond, generator=torch.Generator().manual_seed(s), return_trajectory=trajectory)

        out = draw(seed)
        check_tensor(out.x, where, "out.x", shape)
        times = out.times
        check(isinstance(times, Tensor) and times.ndim == 1 and times.numel() >= 2, where,
              f"out.times must be a 1-D tensor of at least 2 levels, got {getattr(times, 'shape', times)}")
        check(bool(torch.all(times[1:] > times[:-1])), where, f"out.times is not strictly ascending: {times.tolist()}")
        again = draw(seed)
        check(torch.equal(again.x, out.x), where,
              f"the same generator seed gave different samples (max difference {max_abs_diff(again.x, out.x):.3g})")
        other = draw(seed + 1)
        check(not torch.equal(other.x, out.x), where, "different generator seeds gave identical samples")
        traj = draw(seed, trajectory=True)
        check_tensor(traj.x, where, "out.x (return_trajectory=True)", shape)
        check(traj.x_trajectory is not None, where, "return_trajectory=True gave x_trajectory=None")
        check_tensor(traj.x_trajectory, where, "x_trajectory", (traj.times.numel(), *shape))
        check(torch.equal(traj.x_trajectory[0], traj.x), where,
              f"x_trajectory[0] != out.x (max difference {max_abs_diff(traj.x_trajectory[0], traj.x):.3g})")
        err = max_abs_diff(traj.x, out.x)
        check(err <= tol, where, f"asking for the trajectory changed the sample: max difference {err:.3g} > {tol:g}")
        if getattr(sampler, "splits_batch", False) and n > 1:
            parts = [sampler(model, stop - start, None if cond is None else cond[start:stop],
                             generator=torch.Generator().manual_seed(seed), rows=Rows(start, stop, n)).x
                     for start, stop in ((0, 1), (1, n))]
            err = max_abs_diff(torch.cat(parts), out.x)
            check(err <= tol, where, f"rows 0:1 and 1:{n} sampled apart differ from the whole batch's: max difference "
                                     f"{err:.3g} > {tol:g}")


__all__ = ["MODEL_DIMS", "check_sampler", "default_sampler_model"]
