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
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from ntm.conditioning.condition import Condition
from ntm.nn.component import TrainableComponent
from ntm.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.data.base import Batch
    from ntm.spec import ModelDims

BatchField = Literal["label", "caption"]
"""The fields of a batch a conditioner can read."""

NULL_TOKEN = -1
"""Token ids of a null row (a dropped or empty caption): every entry of the row is ``NULL_TOKEN``."""


class Conditioner(ABC):
    """``(raw (labels (B,) | captions [B strings] | None), num_classes, generator) -> model condition input``.

    :attr:`reads` names the batch field that is ``raw``; :meth:`condition` reads it from a batch, which is how
    the training step, held-out scoring and distillation call a conditioner.
    """

    reads: ClassVar[BatchField] = "label"
    """The batch field this conditioner reads (``"label"`` unless a variant says otherwise, e.g. ``"caption"``)."""

    def condition(self, batch: Batch, num_classes: int, generator: torch.Generator | None = None) -> Tensor | None:
        """The model's condition input for ``batch``: its :attr:`reads` field made into what the model reads.

        Without ``generator`` (held-out scoring, sampling): :meth:`inputs`, no dropout. With one (training):
        ``self(raw, num_classes, generator)``, the condition dropout drawn from ``generator``; a tensor field is
        first moved to the generator's device (the training step's condition generator is a CPU one). A batch
        whose field is ``None`` gives what the conditioner makes of ``None`` (no condition, or the null one).
        """
        raw = getattr(batch, self.reads)
        if generator is None:
            return self.inputs(raw, num_classes)
        if isinstance(raw, Tensor):
            raw = raw.to(generator.device)
        return self(raw, num_classes, generator)

    @abstractmethod
    def __call__(self, raw: Any, num_classes: int, generator: torch.Generator | None = None) -> Tensor | None:
        """The training condition for one batch (condition dropout applied); ``None`` means no condition."""

    def inputs(self, raw: Any, num_classes: int) -> Tensor | None:
        """The condition input without dropout: what held-out scoring and sampling feed."""
        return self(raw, num_classes, None)


def heldout_condition(conditioner: Conditioner | None, batch: Batch, num_classes: int,
                      device: torch.device | str) -> Tensor | None:
    """The condition input of a held-out ``batch`` on ``device``: :meth:`Conditioner.condition` without dropout,
    or, without a conditioner, the batch's labels as they are (``None`` for unlabelled data or ``num_classes``
    0). What held-out scoring and the distilled denoiser's evaluation condition on."""
    if conditioner is None:
        return None if batch.label is None or num_classes == 0 else batch.label.to(device)
    cond = conditioner.condition(batch, num_classes)
    return None if cond is None else cond.to(device)


class FunctionConditioner(Conditioner):
    """A plain function ``(raw, num_classes, generator) -> condition input`` as a :class:`Conditioner` reading
    ``reads`` (for callers that hand the training loop a function, e.g. ``lambda raw, n, g: None``)."""

    def __init__(self, fn: Callable[[Any, int, torch.Generator | None], Tensor | None],
                 reads: BatchField = "label") -> None:
        self.fn = fn
        self.reads = reads  # type: ignore[misc]  # per instance here

    def __call__(self, raw: Any, num_classes: int, generator: torch.Generator | None = None) -> Tensor | None:
        return self.fn(raw, num_classes, generator)


def as_conditioner(conditioner: Conditioner | Callable[[Any, int, torch.Generator | None], Tensor | None]
                   ) -> Conditioner:
    """``conditioner`` itself when it is a :class:`Conditioner`, else the function wrapped as a
    :class:`FunctionConditioner` reading ``"label"``."""
    return conditioner if isinstance(conditioner, Conditioner) else FunctionConditioner(conditioner)


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
    """The batch field the built conditioner reads (a data source must provide it): ``"label"`` unless a variant
    says otherwise. A class attribute, not a config field (it is not in ``config.json``); read it as
    ``exp.conditioner.reads``."""

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
    "ConditionerConfig", "FunctionConditioner", "as_conditioner",
]
