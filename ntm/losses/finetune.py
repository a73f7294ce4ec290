"""Finetuning from a pretrained flow-matching model: trajectory NLL + annealed mean alignment (docs/math.md §9).

    L = L_NTM / (K D) + lambda(step) * mean_k,d (mu_theta(u_{t_k}) - sg(mu~_ref(x_{t_k})))^2

``mu_theta`` is the predictor's mean over ``u_{k-1}`` from level ``k`` (u-space);
``mu~_ref`` is the §4 posterior mean that a frozen copy of the pretrained
backbone predicts directly from ``x_{t_k}`` (x-space). Both are computed on
the same forward trajectory as the NLL. At step 0 of a finetune (identity
transporter, the predictor equal to its frozen copy) the alignment term is 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import pydantic
import torch
from torch import Tensor

from ntm.losses.base import LOSSES
from ntm.losses.nll import EndToEndConfig, EndToEndLoss

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig


class FinetuneConfig(EndToEndConfig):
    align_weight: float = pydantic.Field(1.0, ge=0)
    """lambda: weight of the mean-alignment loss at the start of training (>= 0)."""
    align_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """How lambda anneals over the run: constant, linear to zero, or cosine to zero at the last step."""

    def build(self) -> "FinetuneLoss":
        return FinetuneLoss(self)

    def check_model(self, model: "NTMConfig") -> None:
        if not getattr(model.predictor, "reference", False):
            raise ValueError("loss finetune needs a frozen copy of the teacher: predictor:posterior "
                             "with --predictor.reference (see ntm finetune)")


@LOSSES.register("finetune", FinetuneConfig)
class FinetuneLoss(EndToEndLoss):
    """End-to-end trajectory NLL plus ``lambda(step)`` times the §9 mean alignment to the frozen teacher."""

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()
        self.weight = self.config.align_weight

    def at_step(self, step: int, total_steps: int) -> None:
        progress = step / max(total_steps - 1, 1)
        self.weight = self.config.align_weight * align_factor(self.config.align_schedule, progress)

    def score_group(self, model: "NTM", x: Tensor, num_steps: int, cond: Tensor | None, generator):
        times = model.process.times(num_steps, device=x.device, dtype=x.dtype)
        trajectory = model.process.sample_trajectory(x, times, generator)
        terms = model.step_terms(trajectory, times, cond)
        target = model.predictor.reference_trajectory(trajectory[1:], times, cond)  # (K, B, N, d), no grad
        align = (terms.distribution.mean - target).square().mean(dim=(0, 2, 3))  # (B,)
        return terms.step_nlls(), trajectory, times, align

    def extra_term(self, extra_mean: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        metrics["align_mse"] = extra_mean.detach().double()
        metrics["align_weight"] = torch.full((), self.weight, dtype=torch.float64, device=extra_mean.device)
        return self.weight * extra_mean


def align_factor(schedule: str, progress: float) -> float:
    """The annealing factor of lambda at ``progress`` in [0, 1] (1 at the start)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


__all__ = ["FinetuneConfig", "FinetuneLoss", "align_factor"]
