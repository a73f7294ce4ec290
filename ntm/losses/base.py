"""The loss interface: ``(model, batch) -> LossOutput(loss, metrics)``."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from registry import ComponentConfig, Registry


@dataclasses.dataclass
class LossOutput:
    loss: Tensor
    """Scalar to minimise (nats per dimension)."""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """Detached scalars for logging. Plain keys must be emitted by every call (the loop averages
    them across ranks); keys with a '/' (e.g. ``nll_bpd/K4``) are optional breakdowns, kept per rank."""


class Loss(ABC):
    @abstractmethod
    def __call__(
        self, model: torch.nn.Module, x: Tensor, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> LossOutput:
        """``x`` is a batch of clean tokens ``(B, N, d)``; ``cond`` ``(B,)`` labels or ``None``."""


LOSSES: Registry[Loss] = Registry("loss", base=Loss)

__all__ = ["LOSSES", "ComponentConfig", "Loss", "LossOutput"]
