"""The conditioner interface: turn a batch's raw condition into the model's condition input.

A conditioner reads one field of a :class:`~ntm.data.base.Batch` (``reads``:
``"label"`` or ``"caption"``) and turns it into the model's raw condition
input, applying condition dropout during training:

* class labels -> ``(B,)`` int64 in ``0 .. num_classes``; ``num_classes`` is
  the *null* label ("no condition", shared with
  :class:`ntm.nn.embeddings.LabelEmbedding`), which dropout feeds during
  training and classifier-free guidance uses when sampling;
* captions -> ``(B, L)`` int64 token ids, a dropped or empty caption being
  the null row (every entry :data:`NULL_TOKEN`).

A conditioner whose input needs encoding (token ids) also builds, from its
config, a :class:`ConditionEncoder` that the model owns and trains
(``NTM.condition_encoder``): token ids -> :class:`~ntm.conditioning.condition.Condition`,
with a learned null condition for null rows. Labels need no encoder: the
components' label tables are the encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from ntm.conditioning.condition import Condition
from ntm.nn.component import TrainableComponent
from ntm.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.spec import ModelDims

BatchField = Literal["label", "caption"]
"""The fields of a batch a conditioner can read."""

NULL_TOKEN = -1
"""Token ids of a null row (a dropped or empty caption): every entry of the row is ``NULL_TOKEN``."""


class Conditioner(ABC):
    """``(raw (labels (B,) | captions [B strings] | None), num_classes, generator) -> model condition input``.

    ``reads`` names the batch field the training loop passes as ``raw``.
    """

    reads: ClassVar[BatchField] = "label"

    @abstractmethod
    def __call__(self, raw: Any, num_classes: int, generator: torch.Generator | None = None) -> Tensor | None:
        """The training condition for one batch (condition dropout applied); ``None`` means no condition."""

    def inputs(self, raw: Any, num_classes: int) -> Tensor | None:
        """The condition input without dropout: what held-out scoring and sampling feed."""
        return self(raw, num_classes, None)


class ConditionEncoder(TrainableComponent, ABC):
    """A trained module of the model: condition input (e.g. ``(B, L)`` token ids) -> :class:`Condition`.

    Rows that are null (all :data:`NULL_TOKEN`) become the learned null
    condition, which :meth:`null` also gives for a whole batch (classifier-free
    guidance, unconditional sampling). Its parameters are the NTM's parameter
    group ``condition_encoder``.
    """

    param_group: ClassVar[str] = "condition_encoder"

    @abstractmethod
    def forward(self, inputs: Tensor) -> Condition:
        """Condition inputs of a batch -> one :class:`Condition` row each."""

    @abstractmethod
    def null(self, batch: int) -> Condition:
        """The learned null condition, ``batch`` rows (on the encoder's device and dtype)."""


class ConditionerConfig(ComponentConfig):
    """Base of the conditioner configs: what the conditioner reads and what it adds to the model."""

    reads: ClassVar[BatchField] = "label"
    """The batch field the built conditioner reads (a data source must provide it)."""

    def build(self) -> Conditioner:  # pragma: no cover - interface
        raise NotImplementedError

    def model_dims(self, num_classes: int) -> dict[str, int]:
        """The conditioning fields of :class:`~ntm.spec.ModelDims` for data with ``num_classes`` labels.

        Default (class labels): ``{"num_classes": num_classes}``.
        """
        return {"num_classes": num_classes}

    def encoder(self, dims: ModelDims) -> ConditionEncoder | None:
        """The condition encoder the model owns, or ``None`` (labels, no condition)."""
        return None


CONDITIONERS: Registry[Conditioner] = Registry("conditioner", base=Conditioner)

__all__ = [
    "CONDITIONERS", "NULL_TOKEN", "BatchField", "ComponentConfig", "ConditionEncoder", "Conditioner",
    "ConditionerConfig",
]
