"""Conditioners ``(labels, num_classes, generator) -> cond``. Each variant registers in ``CONDITIONERS``."""

from ntm.conditioning.base import CONDITIONERS, Conditioner
from ntm.conditioning.labels import ClassLabelConditioner, ClassLabelConfig, NoConditionConfig, NoConditioner

__all__ = ["CONDITIONERS", "ClassLabelConditioner", "ClassLabelConfig", "Conditioner", "NoConditionConfig", "NoConditioner"]
