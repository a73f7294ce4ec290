"""Held-out likelihood: ``nll_traj_bpd`` and the ``x_{t_0}`` bound per step count (docs/math.md §11)."""

from __future__ import annotations

import math

import torch

from ntm.conditioning.base import heldout_condition
from ntm.conditioning.condition import encode_condition
from ntm.data.base import DataError, DataSource
from ntm.losses.nll import x0_bound_nats
from ntm.nn.tokens import TokenLayout
from ntm.train import distributed as D


@torch.no_grad()
def heldout_nll(
    model: torch.nn.Module,
    data: DataSource,
    layout: TokenLayout,
    steps: list[int],
    *,
    batch_size: int = 500,
    max_examples: int | None = None,
    seed: int = 0,
    conditioner=None,
) -> dict[int, dict[str, float]]:
    """For each K: mean ``nll_traj_bpd``, ``bound_bpd`` (bits/dim) and the example count.

    The conditional NLL uses the true condition: ``conditioner`` (the run's, e.g.
    ``exp.conditioner.build()``) reads its batch field without dropout
    (:meth:`~ntm.conditioning.base.Conditioner.condition` without a generator) and the model encodes it. Without a conditioner the
    labels are used when the data has classes (a model with a condition encoder,
    i.e. captions, then needs the conditioner: a :class:`DataError` says so). One
    forward trajectory per example, from a generator seeded by ``seed`` (deterministic).

    A model sharded over ranks (FSDP under torchrun) is scored by every rank (call it on all of them): each
    draws the trajectories of the whole batch (the noise one process draws) and scores its rows of it; the sums
    are added over the ranks, so every rank returns the one-process result up to float summation order.
    """
    if conditioner is None and getattr(model, "condition_encoder", None) is not None:
        raise DataError("the held-out NLL of a caption-conditioned model needs the run's conditioner "
                        "(heldout_nll(..., conditioner=exp.conditioner.build()))")
    device = next(model.parameters()).device
    sharded = D.is_sharded(model)
    results: dict[int, dict[str, float]] = {}
    for k in steps:
        gen = torch.Generator(device=device).manual_seed(seed + k)
        total_nll, total_bound, count = 0.0, 0.0, 0
        for batch in data.eval_batches(batch_size, max_examples=max_examples):
            x = layout.to_tokens(batch.x.to(device))
            cond = heldout_condition(conditioner, batch, data.spec.num_classes, device)
            if sharded:
                nll, bound = _sharded_sums(model, x, k, cond, gen)
                total_nll, total_bound = total_nll + nll, total_bound + bound
            else:
                cond = encode_condition(model, cond, x.shape[0])
                step_nlls, traj, times = model.trajectory_nll(x, k, cond, gen)
                total_nll += step_nlls.sum().item()
                total_bound += x0_bound_nats(step_nlls, traj, times).sum().item()
            count += x.shape[0]
        if sharded:
            total_nll, total_bound = D.all_sum([total_nll, total_bound], device)
        if count == 0:
            raise DataError("the data source has no held-out examples to score")
        dim = layout.dim
        results[k] = {
            "nll_traj_bpd": total_nll / (count * k * dim * math.log(2)),
            "bound_bpd": total_bound / (count * dim * math.log(2)),
            "examples": count,
        }
    return results


def _sharded_sums(model: torch.nn.Module, x: torch.Tensor, k: int, cond, gen: torch.Generator) -> tuple[float, float]:
    """This rank's ``(nll, bound)`` sums (nats) over its rows of ``x``; the trajectories are drawn for every row.

    Rows are split as evenly as ``torch.tensor_split`` does; a rank without rows (a batch smaller than the world)
    scores row 0 and counts nothing, so that every rank takes part in the same sharded calls.
    """
    import torch.distributed as dist

    times = model.process.times(k, device=x.device, dtype=x.dtype)
    trajectory = model.process.sample_trajectory(x, times, gen)
    index = torch.arange(x.shape[0]).tensor_split(dist.get_world_size())[dist.get_rank()]
    keep = index.numel() > 0
    rows = index if keep else torch.zeros(1, dtype=torch.long)
    part = trajectory[:, rows.to(x.device)]
    part_cond = None if cond is None else cond[rows.to(cond.device) if isinstance(cond, torch.Tensor) else rows]

    def score(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        step_nlls = model.step_nlls(part, times, encode_condition(model, part_cond, part.shape[1]))
        return step_nlls.sum(), x0_bound_nats(step_nlls, part, times).sum()

    nll, bound = D.run_sharded(model, score)
    return (nll.item(), bound.item()) if keep else (0.0, 0.0)
