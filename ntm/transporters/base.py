"""The transporter interface: an invertible, same-dimension map per trajectory level (docs/math.md §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from ntm.spec import ModelDims
from registry import ComponentConfig, Registry


class Transporter(nn.Module, ABC):
    """``f(x; t, c)``: tokens ``(B, N, d)`` -> ``(u, log|det du/dx|)`` with ``logdet`` of shape ``(B,)``.

    ``t`` is ``(B,)``; ``cond`` is ``None`` or ``(B,)`` int64 labels (null label
    allowed). ``inverse(forward(x)[0]) == x`` up to float error.
    ``inverse_methods`` names alternative inverse algorithms a variant offers
    (selected with ``inverse(..., method=name)``); the conformance suite
    checks each against the default.
    """

    inverse_methods: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def inverse(self, u: Tensor, t: Tensor, cond: Tensor | None = None, method: str | None = None) -> Tensor: ...

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own, e.g. transformer blocks.

        Default: every submodule whose class sets ``fsdp_unit = True`` (as
        :class:`ntm.nn.layers.AdaLNBlock` does). Override to choose others.
        """
        return [m for m in self.modules() if getattr(type(m), "fsdp_unit", False)]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters (``train.lr_scale`` and ``train.freeze_steps`` address them).

        Default: one group ``"transporter"`` holding every parameter with ``requires_grad``.
        An override must put each trainable parameter in exactly one group and none
        that is frozen; its names must not clash with the predictor's.
        """
        return {"transporter": [p for p in self.parameters() if p.requires_grad]}


class TransporterConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Transporter:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def conformance_configs(cls) -> list["TransporterConfig"]:
        """Configs the conformance suite exercises (default: the default config)."""
        return [cls()]


TRANSPORTERS: Registry[Transporter] = Registry("transporter", base=Transporter)
