"""Flow-matching velocity regression (docs/math.md §1): the flow-matching baseline's objective."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pydantic
import torch
from torch import Tensor

from ntm.losses.base import LOSSES, Loss, LossConfig, LossOutput
from ntm.predictors import PREDICTORS, VELOCITY_HINT, velocity_model
from ntm.transporters import TRANSPORTERS, IdentityConfig

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig


class FlowMatchingConfig(LossConfig):
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"
    """Distribution of t: uniform on [0, 1], or logit-normal (SD3) concentrated at mid times."""
    logit_std: float = pydantic.Field(1.0, gt=0)
    """Standard deviation of the logit-normal time distribution."""

    def build(self) -> "FlowMatchingLoss":
        return FlowMatchingLoss(self)

    def check_model(self, model: "NTMConfig") -> None:
        if not isinstance(model.transporter, IdentityConfig):
            name = TRANSPORTERS.name_of(model.transporter)
            raise ValueError(f"loss flow-matching trains the velocity on x directly and would ignore transporter "
                             f"'{name}'; use transporter:identity")
        if not model.predictor.gives_velocity():
            name = PREDICTORS.name_of(model.predictor)
            raise ValueError(f"loss flow-matching trains a velocity that predictor '{name}' does not give; "
                             f"use {VELOCITY_HINT}")


@LOSSES.register("flow-matching", FlowMatchingConfig)
class FlowMatchingLoss(Loss):
    """``E_t,x,eps |v(x_t, t) - (eps - x)|^2`` per dimension, with ``x_t = (1 - t) x + t eps``.

    Needs a model whose predictor is a :class:`~ntm.predictors.VelocityPredictor`
    (``predictor:posterior`` with ``velocity-transformer``); the same network
    then serves the analytic Gaussian-posterior NLL and the Euler/Heun samplers.
    """

    def __init__(self, config: FlowMatchingConfig | None = None) -> None:
        self.config = config or FlowMatchingConfig()

    def sample_times(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``(batch,)`` times in [0, 1] on ``device``."""
        gen_device = generator.device if generator is not None else device
        if self.config.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=gen_device)
        else:
            t = torch.sigmoid(torch.randn(batch, generator=generator, device=gen_device) * self.config.logit_std)
        return t.to(device)

    def __call__(self, model: "NTM", x: Tensor, cond: Tensor | None = None, generator=None) -> LossOutput:
        vm = velocity_model(model)
        t = self.sample_times(x.shape[0], generator, x.device).to(x.dtype)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        t_ = t.reshape(-1, *([1] * (x.ndim - 1)))
        x_t = (1 - t_) * x + t_ * eps
        v = vm.velocity(x_t, t, cond)
        mse = (v.float() - (eps - x).float()).square().mean()
        return LossOutput(mse, {"fm_mse": mse.detach().double()})
