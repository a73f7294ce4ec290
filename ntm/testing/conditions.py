"""Conditions for the conformance checks: class labels, or encoded (text) Conditions.

The checks exercise each component with the condition its dims describe:
``(B,)`` labels on ``0 .. num_classes`` (the null label among them) when
``num_classes > 0``, and a random :class:`~ntm.conditioning.condition.Condition`
when ``cond_dim > 0`` (``pooled`` and, with ``cond_len > 0``, ``tokens`` whose
``mask`` keeps a random prefix of at least one token per row, like an encoded
caption followed by padding). :data:`TEXT_DIMS` are the text dims of the grids.
"""

from __future__ import annotations

import torch

from ntm.conditioning.condition import Cond, Condition
from ntm.spec import ModelDims

TEXT_DIMS = ModelDims(3, 2, cond_dim=6, cond_len=4)
"""Three tokens of two channels conditioned on an encoded condition: 6 features, up to 4 tokens."""


def random_condition(dims: ModelDims, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Condition:
    """A :class:`Condition` of ``batch`` rows for ``dims`` (``cond_dim > 0``), drawn from ``generator``.

    Row ``i``'s mask is True on its first ``1 .. cond_len`` positions (the last
    row has one real token when ``batch > 1``: the shortest caption).
    """
    pooled = torch.randn(batch, dims.cond_dim, generator=generator, dtype=dtype)
    if not dims.cond_len:
        return Condition(pooled)
    tokens = torch.randn(batch, dims.cond_len, dims.cond_dim, generator=generator, dtype=dtype)
    lengths = torch.randint(1, dims.cond_len + 1, (batch,), generator=generator)
    if batch > 1:
        lengths[-1] = 1
    mask = torch.arange(dims.cond_len)[None] < lengths[:, None]
    return Condition(pooled, tokens, mask)


def condition_inputs(
    dims: ModelDims, batch: int, generator: torch.Generator, *, dtype: torch.dtype = torch.float64,
    with_condition: bool = True,
) -> Cond:
    """The condition the checks pass for ``dims``: a Condition (``cond_dim > 0``), labels (``num_classes > 0``,
    uniform on ``0 .. num_classes`` with the null label last when ``B > 1``), or ``None``."""
    if not with_condition:
        return None
    if dims.cond_dim:
        return random_condition(dims, batch, generator, dtype)
    if dims.num_classes:
        cond = torch.randint(0, dims.num_classes + 1, (batch,), generator=generator)
        if batch > 1:
            cond[-1] = dims.num_classes
        return cond
    return None


def describe_condition(dims: ModelDims, with_condition: bool) -> str:
    """``"labels"``, ``"text condition"`` or ``"cond=None"`` for failure messages."""
    if with_condition and dims.cond_dim:
        return "text condition"
    return "labels" if with_condition and dims.num_classes else "cond=None"


__all__ = ["TEXT_DIMS", "condition_inputs", "describe_condition", "random_condition"]
