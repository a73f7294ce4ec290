"""The transporter interface: an invertible, same-dimension map per trajectory level (ntm-math §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from ntm.spec import ModelDims
from registry import ComponentConfig, Registry


class Transporter(nn.Module, ABC):
    """``f(x; t, c)``: tokens ``(B, N, d)`` -> ``(u, log|det du/dx|)`` with ``logdet`` of shape ``(B,)``.

    ``t`` is ``(B,)``; ``cond`` is ``None`` or ``(B,)`` int64 labels (null label
    allowed). ``inverse(forward(x)[0]) == x`` up to float error.
    """

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def inverse(self, u: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


class TransporterConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Transporter:  # pragma: no cover - interface
        raise NotImplementedError


TRANSPORTERS: Registry[Transporter] = Registry("transporter", base=Transporter)
