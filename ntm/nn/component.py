"""What the trainer asks of a model component (transporter, predictor): its FSDP units and parameter groups."""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class TrainableComponent(nn.Module):
    """Base of the trained components; the defaults below serve most variants.

    ``param_group`` names the component's single default parameter group.
    """

    param_group: ClassVar[str] = "all"

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own, e.g. transformer blocks.

        Default: every submodule whose class sets ``fsdp_unit = True`` (as
        :class:`ntm.nn.layers.AdaLNBlock` does). Override to choose others.
        """
        return [m for m in self.modules() if getattr(type(m), "fsdp_unit", False)]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters (``train.lr_scale`` and ``train.freeze_steps`` address them).

        Default: one group named ``param_group`` holding every parameter with ``requires_grad``.
        An override must put each trainable parameter in exactly one group and none that is
        frozen; its names must not clash with the other components'.
        """
        return {self.param_group: [p for p in self.parameters() if p.requires_grad]}
