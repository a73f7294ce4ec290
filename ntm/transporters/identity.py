"""The identity transporter: ``u = x``, ``logdet = 0`` (a K-step Gaussian model)."""

from __future__ import annotations

import torch
from torch import Tensor

from ntm.spec import ModelDims
from ntm.transporters.base import TRANSPORTERS, Transporter, TransporterConfig


class IdentityConfig(TransporterConfig):
    def build(self, dims: ModelDims) -> "IdentityTransporter":
        return IdentityTransporter()


@TRANSPORTERS.register("identity", IdentityConfig)
class IdentityTransporter(Transporter):
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, torch.zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)

    def inverse(self, u: Tensor, t: Tensor, cond: Tensor | None = None, method: str | None = None) -> Tensor:
        return u
