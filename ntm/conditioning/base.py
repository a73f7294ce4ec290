"""The conditioner interface: turn a batch's labels into the condition the model is trained on.

Label convention (shared with :class:`ntm.nn.embeddings.LabelEmbedding`):
classes are ``0 .. num_classes - 1`` and ``num_classes`` is the *null* label
("no condition"), which condition dropout feeds during training and
classifier-free guidance uses when sampling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from registry import ComponentConfig, Registry


class Conditioner(ABC):
    """``(labels (B,) int64 | None, num_classes, generator) -> cond (B,) int64 | None``."""

    @abstractmethod
    def __call__(
        self, labels: Tensor | None, num_classes: int, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """The training condition for one batch; ``None`` means unconditional."""


CONDITIONERS: Registry[Conditioner] = Registry("conditioner", base=Conditioner)

__all__ = ["CONDITIONERS", "ComponentConfig", "Conditioner"]
