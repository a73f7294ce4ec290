"""Trajectory NLL losses (end-to-end and pair-wise) and the reported numbers (docs/math.md §5, §11)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ntm.distributions import Gaussian, sum_except_batch
from ntm.forward import interpolant as I
from ntm.losses.base import LOSSES, Loss, LossConfig, LossOutput
from ntm.predictors import PREDICTORS

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig

LN2 = math.log(2.0)


def nll_traj_bpd(step_nlls: Tensor, dim: int) -> Tensor:
    """``L / (K D ln 2)`` per example from ``(B, K)`` per-step NLLs in nats (§11)."""
    return step_nlls.sum(-1) / (step_nlls.shape[-1] * dim * LN2)


def forward_log_prob(trajectory: Tensor, times: Tensor) -> Tensor:
    """``sum_{k=1}^{K-1} log q(x_{t_k} | x_{t_{k-1}})`` per example, ``(B,)`` nats."""
    total = torch.zeros(trajectory.shape[1], dtype=torch.promote_types(trajectory.dtype, torch.float32), device=trajectory.device)
    for k in range(1, times.numel() - 1):
        a, b2 = I.transition(times[k - 1], times[k])
        q = Gaussian(a * trajectory[k - 1], (0.5 * torch.log(b2)).expand_as(trajectory[k]))
        total = total - sum_except_batch(q.nll(trajectory[k]))
    return total


def x0_bound_nats(step_nlls: Tensor, trajectory: Tensor, times: Tensor) -> Tensor:
    """Upper bound on ``-log p(x_{t_0})``: ``L + sum_{k<K} log q(x_{t_k} | x_{t_{k-1}})`` (§11), ``(B,)``.

    Its expectation over forward trajectories is the bound; one trajectory gives an unbiased estimate.
    """
    return step_nlls.sum(-1) + forward_log_prob(trajectory, times)


def _bits(nats: Tensor) -> Tensor:
    """A 0-dim metric in nats -> bits, detached float64 on its device (no host sync).

    Divides by a device-resident ln 2: a true float64 division, equal bit for
    bit to the host-side ``nats.item() / ln 2`` it replaces.
    """
    nats = nats.detach().double()
    return nats / torch.full((), LN2, dtype=torch.float64, device=nats.device)


def _group_by_steps(num_steps: Tensor) -> list[tuple[int, Tensor]]:
    return [(int(k), (num_steps == k).nonzero().squeeze(-1)) for k in torch.unique(num_steps)]


def _take(cond: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if cond is None else cond[idx]


class EndToEndConfig(LossConfig):
    def build(self) -> "EndToEndLoss":
        return EndToEndLoss()


@LOSSES.register("end-to-end", EndToEndConfig)
class EndToEndLoss(Loss):
    """All K factors of each example's trajectory; loss = mean of ``L / (K D)``.

    Each example draws its K from the forward process's set; examples are
    grouped by K so every group is one batched pass.
    """

    def __call__(self, model: "NTM", x: Tensor, cond: Tensor | None = None, generator=None) -> LossOutput:
        b, dim = x.shape[0], model.dims.dim
        num_steps = model.process.sample_num_steps(b, generator, device=x.device)
        per_dim = torch.zeros(b, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        bound = torch.zeros_like(per_dim)
        metrics: dict[str, Tensor] = {}
        extra = None
        for k, idx in _group_by_steps(num_steps):
            step_nlls, trajectory, times, group_extra = self.score_group(model, x[idx], k, _take(cond, idx), generator)
            per_dim[idx] = step_nlls.sum(-1) / (k * dim)
            bound[idx] = x0_bound_nats(step_nlls.detach(), trajectory, times) / dim
            metrics[f"nll_bpd/K{k}"] = (per_dim[idx].detach().mean() / LN2).double()
            if group_extra is not None:
                extra = torch.zeros_like(per_dim) if extra is None else extra
                extra[idx] = group_extra
        loss = per_dim.mean()
        metrics.update(nll_traj_bpd=_bits(loss), bound_bpd=_bits(bound.mean()))
        if extra is not None:
            loss = loss + self.extra_term(extra.mean(), metrics)
        return LossOutput(loss, metrics)

    def score_group(
        self, model: "NTM", x: Tensor, num_steps: int, cond: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One K-group: ``(step_nlls (B, K), trajectory, times, extra (B,) | None)``.

        Subclasses that add a per-example term to the NLL (e.g. finetuning's mean
        alignment) return it as ``extra``, computed from the same trajectory, and
        weigh it in :meth:`extra_term`.
        """
        return (*model.trajectory_nll(x, num_steps, cond, generator), None)

    def extra_term(self, extra_mean: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        """The scalar added to the loss for the batch mean of ``extra`` (may log into ``metrics``)."""
        return extra_mean


class PairWiseConfig(LossConfig):
    def build(self) -> "PairWiseLoss":
        return PairWiseLoss()

    def check_model(self, model: "NTMConfig") -> None:
        if not model.predictor.predictor_class().markov:
            name = PREDICTORS.name_of(model.predictor)
            raise ValueError(f"loss pair-wise needs a Markov predictor; predictor '{name}' needs loss:end-to-end")


@LOSSES.register("pair-wise", PairWiseConfig)
class PairWiseLoss(Loss):
    """One random step ``k ~ U{1..K}`` per example; ``K l_k / (K D) = l_k / D`` is unbiased for ``L / (K D)``."""

    def __call__(self, model: "NTM", x: Tensor, cond: Tensor | None = None, generator=None) -> LossOutput:
        b, dim = x.shape[0], model.dims.dim
        num_steps = model.process.sample_num_steps(b, generator, device=x.device)
        s = torch.empty(b, dtype=x.dtype, device=x.device)
        t = torch.empty_like(s)
        for k, idx in _group_by_steps(num_steps):
            times = model.process.times(k, device=x.device, dtype=x.dtype)
            gen_device = generator.device if generator is not None else x.device
            step = torch.randint(1, k + 1, (idx.numel(),), generator=generator, device=gen_device).to(x.device)
            s[idx], t[idx] = times[step - 1], times[step]
        x_s, x_t = model.process.sample_pair(x, s, t, generator)
        per_dim = model.pair_nll(x_s, x_t, s, t, cond) / dim
        loss = per_dim.mean()
        return LossOutput(loss, {"nll_traj_bpd": _bits(loss)})
