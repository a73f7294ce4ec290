"""An encoded condition (:class:`Condition`) and the batch operations shared with label tensors.

Wherever a model component receives ``cond`` it is one of

* ``None``: no condition (a class-conditional component reads the null label);
* a ``(B,)`` int64 tensor of class labels, ``num_classes`` being the null label;
* a :class:`Condition`: what a condition encoder (e.g. ``conditioner:small-text``)
  made of the batch's captions.

Code that only moves conditions around (splits a batch, tiles it over
trajectory levels, doubles it for guidance) uses the operations both kinds
share: ``cond.shape[0]``, ``len(cond)``, ``cond[idx]``, ``cond.repeat(n)``,
``cond.to(device)``, and :func:`condition_cat` / :func:`condition_batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class Condition:
    """One encoded condition per example.

    ``pooled`` ``(B, D)`` is read into every component's adaLN context vector;
    ``tokens`` ``(B, L, D)`` (or ``None``) are read by cross-attention, where
    ``mask`` ``(B, L)`` bool marks the real tokens (True) among padding. Each
    row with tokens has at least one real token.
    """

    pooled: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.pooled.ndim != 2:
            raise ValueError(f"Condition.pooled must be (B, D), got {tuple(self.pooled.shape)}")
        b = self.pooled.shape[0]
        if (self.tokens is None) != (self.mask is None):
            raise ValueError("Condition.tokens and Condition.mask come together (both or neither)")
        if self.tokens is not None:
            assert self.mask is not None
            if self.tokens.ndim != 3 or self.tokens.shape[0] != b:
                raise ValueError(f"Condition.tokens must be (B={b}, L, D), got {tuple(self.tokens.shape)}")
            if self.mask.dtype != torch.bool or tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
                raise ValueError(f"Condition.mask must be a bool {tuple(self.tokens.shape[:2])} tensor, "
                                 f"got {self.mask.dtype} {tuple(self.mask.shape)}")

    # -- what a (B,) label tensor also offers ---------------------------------------
    @property
    def shape(self) -> torch.Size:
        """``torch.Size([B])``, so ``cond.shape[0]`` is the batch size as for labels."""
        return torch.Size([self.pooled.shape[0]])

    def __len__(self) -> int:
        return self.pooled.shape[0]

    @property
    def device(self) -> torch.device:
        return self.pooled.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pooled.dtype

    def _map(self, fn, mask_fn=None) -> Condition:
        mask_fn = mask_fn or fn
        return Condition(fn(self.pooled), None if self.tokens is None else fn(self.tokens),
                         None if self.mask is None else mask_fn(self.mask))

    def __getitem__(self, index: Any) -> Condition:
        """Rows of the batch: a slice, an index tensor or a boolean mask; an ``int`` gives a batch of one."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda z: z[index])

    def repeat(self, n: int) -> Condition:
        """The batch tiled ``n`` times (rows ``0..B-1, 0..B-1, ...``), like ``labels.repeat(n)``."""
        return self._map(lambda z: z.repeat(n, *([1] * (z.ndim - 1))))

    def to(self, *args: Any, **kwargs: Any) -> Condition:
        """``Tensor.to`` on ``pooled`` and ``tokens``; the mask only follows the device (it stays bool)."""
        pooled = self.pooled.to(*args, **kwargs)
        return Condition(pooled, None if self.tokens is None else self.tokens.to(*args, **kwargs),
                         None if self.mask is None else self.mask.to(pooled.device))

    def detach(self) -> Condition:
        return self._map(lambda z: z.detach())

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        """Concatenate along the batch; all have tokens of the same length, or none has tokens."""
        if not conditions:
            raise ValueError("Condition.cat needs at least one condition")
        with_tokens = {c.tokens is not None for c in conditions}
        if len(with_tokens) > 1:
            raise ValueError("Condition.cat: some conditions have tokens and some do not")
        pooled = torch.cat([c.pooled for c in conditions])
        if not with_tokens.pop():
            return Condition(pooled)
        return Condition(pooled, torch.cat([c.tokens for c in conditions]), torch.cat([c.mask for c in conditions]))

    def __repr__(self) -> str:
        tokens = "" if self.tokens is None else f", tokens={tuple(self.tokens.shape)}"
        return f"Condition(B={len(self)}, D={self.pooled.shape[1]}{tokens}, {self.dtype})"


Cond = Tensor | Condition | None
"""What a component accepts as ``cond``."""


def condition_cat(conditions: Sequence[Cond]) -> Cond:
    """Concatenate conditions of one kind along the batch (``None`` s give ``None``)."""
    if all(c is None for c in conditions):
        return None
    if any(c is None for c in conditions):
        raise ValueError("condition_cat: cannot concatenate None with a condition")
    if all(isinstance(c, Tensor) for c in conditions):
        return torch.cat(list(conditions))  # type: ignore[arg-type]
    if all(isinstance(c, Condition) for c in conditions):
        return Condition.cat(conditions)  # type: ignore[arg-type]
    raise TypeError("condition_cat: cannot mix label tensors and Conditions")


def condition_batch(cond: Cond) -> int | None:
    """The batch size of ``cond`` (``None`` for no condition)."""
    return None if cond is None else cond.shape[0]


def encode_condition(model: torch.nn.Module, cond: Any, batch: int | None = None) -> Cond:
    """``model.encode(cond, batch)`` when the model has a condition encoder interface, else ``cond`` unchanged.

    The one call the entry points (samplers, denoisers, held-out NLL) make, so models that are not an
    :class:`~ntm.model.NTM` (test doubles, adapters) keep working with labels.
    """
    encode = getattr(model, "encode", None)
    return cond if encode is None else encode(cond, batch)


__all__ = ["Cond", "Condition", "condition_batch", "condition_cat", "encode_condition"]
