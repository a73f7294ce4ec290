"""The loss interface: ``(model, batch) -> LossOutput(loss, metrics)``."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ntm.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.model import NTMConfig


@dataclasses.dataclass
class LossOutput:
    loss: Tensor
    """Scalar to minimise (nats per dimension)."""
    metrics: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    """Detached 0-dim float64 tensors for logging, left on the loss's device: no host sync per call (the
    training loop turns them into numbers once per logging interval). Plain keys must be emitted by every
    call (the loop averages them across ranks); keys with a '/' (e.g. ``nll_bpd/K4``) are optional
    breakdowns, kept per rank."""


class Loss(ABC):
    @abstractmethod
    def __call__(
        self, model: torch.nn.Module, x: Tensor, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> LossOutput:
        """``x`` is a batch of clean tokens ``(B, N, d)``; ``cond`` ``(B,)`` labels or ``None``."""

    def at_step(self, step: int, total_steps: int) -> None:
        """Told by the training loop before each optimizer step (0-based) of ``total_steps``.

        For losses whose terms follow a schedule (e.g. an annealed weight); the
        default ignores it. Derived from the step alone, so a resumed run agrees.
        """


class LossConfig(ComponentConfig):
    """Base of every loss config."""

    def build(self) -> Loss:  # pragma: no cover - interface
        raise NotImplementedError

    def check_model(self, model: "NTMConfig") -> None:
        """Raise a one-line ``ValueError`` when this loss cannot train models of this config."""


LOSSES: Registry[Loss] = Registry("loss", base=Loss)

__all__ = ["LOSSES", "Loss", "LossConfig", "LossOutput"]
