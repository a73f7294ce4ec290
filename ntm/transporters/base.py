"""The transporter interface: an invertible, same-dimension map per trajectory level (docs/math.md §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from ntm.nn.component import TrainableComponent
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig, Registry


class Transporter(TrainableComponent, ABC):
    """``f(x; t, c)``: tokens ``(B, N, d)`` -> ``(u, log|det du/dx|)`` with ``logdet`` of shape ``(B,)``.

    ``t`` is ``(B,)``; ``cond`` is ``None``, ``(B,)`` int64 labels (null label
    allowed) or an encoded :class:`~ntm.conditioning.condition.Condition`. ``inverse(forward(x)[0]) == x`` up to float error.
    ``inverse_methods`` names alternative inverse algorithms a variant offers
    (selected with ``inverse(..., method=name)``); the conformance suite
    checks each against the default.
    """

    param_group: ClassVar[str] = "transporter"
    inverse_methods: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def inverse(self, u: Tensor, t: Tensor, cond: Tensor | None = None, method: str | None = None) -> Tensor: ...


class TransporterConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Transporter:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def conformance_configs(cls) -> list["TransporterConfig"]:
        """Configs the conformance suite exercises (default: the default config)."""
        return [cls()]


TRANSPORTERS: Registry[Transporter] = Registry("transporter", base=Transporter)
