"""Conditioner variants: class labels with condition dropout, and none (unconditional)."""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from ntm.conditioning.base import CONDITIONERS, Conditioner, ConditionerConfig


class ClassLabelConfig(ConditionerConfig):
    dropout: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    """Fraction of labels replaced by the null label ``num_classes`` (for classifier-free guidance)."""

    def build(self) -> "ClassLabelConditioner":
        return ClassLabelConditioner(self)


@CONDITIONERS.register("class", ClassLabelConfig)
class ClassLabelConditioner(Conditioner):
    """Class labels, each independently replaced by the null label with probability ``dropout``.

    ``labels (B,)`` int64 in ``0 .. num_classes - 1`` -> ``(B,)`` int64 in
    ``0 .. num_classes``; ``labels=None`` (an unconditional source) gives ``None``.
    With ``dropout == 0`` the input tensor is returned as is. The dropout mask
    is drawn from ``generator`` (on its device) and moved to the labels' device.
    """

    def __init__(self, config: ClassLabelConfig) -> None:
        self.config = config

    def __call__(
        self, labels: Tensor | None, num_classes: int, generator: torch.Generator | None = None
    ) -> Tensor | None:
        if labels is None:
            return None
        if num_classes < 1:
            raise ValueError(f"class conditioning needs num_classes >= 1, got {num_classes}")
        if labels.dtype != torch.long or labels.ndim != 1:
            raise TypeError(f"labels must be a (B,) int64 tensor, got {tuple(labels.shape)} {labels.dtype}")
        if self.config.dropout == 0:
            return labels
        device = generator.device if generator is not None else labels.device
        drop = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device) < self.config.dropout
        return torch.where(drop, torch.full_like(labels, num_classes), labels)

    def inputs(self, labels: Tensor | None, num_classes: int) -> Tensor | None:
        """The labels themselves (no dropout); ``None`` for an unlabelled batch or a source without classes."""
        if labels is None or num_classes < 1:
            return None
        return labels


class NoConditionConfig(ConditionerConfig):
    def model_dims(self, num_classes: int) -> dict[str, int]:
        return {"num_classes": 0}

    def build(self) -> "NoConditioner":
        return NoConditioner(self)


@CONDITIONERS.register("none", NoConditionConfig)
class NoConditioner(Conditioner):
    """Unconditional training: always ``None``, whatever the labels."""

    def __init__(self, config: NoConditionConfig | None = None) -> None:
        self.config = config or NoConditionConfig()

    def __call__(
        self, labels: Tensor | None, num_classes: int, generator: torch.Generator | None = None
    ) -> Tensor | None:
        return None

    def inputs(self, labels: Tensor | None, num_classes: int) -> Tensor | None:
        return None


__all__ = ["ClassLabelConditioner", "ClassLabelConfig", "NoConditionConfig", "NoConditioner"]
