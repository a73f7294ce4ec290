"""Time and condition embeddings, and the angles of 2D rotary position embeddings (:func:`rope_2d`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ntm.nn.init import full_parameters


def sinusoidal(t: Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> Tensor:
    """``(B,)`` times in [0, 1] -> ``(B, dim)`` sinusoidal features of ``scale * t``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (scale * t.float())[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def grid_positions(num_tokens: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` ``(num_tokens,)`` int64 of the row-major token grid ``grid = (rows, cols)``."""
    rows, cols = grid
    if rows * cols != num_tokens:
        raise ValueError(f"token grid {rows}x{cols} does not hold {num_tokens} tokens")
    index = torch.arange(num_tokens, device="cpu")  # real values even while a model is built on the meta device
    return index // cols, index % cols


def rope_2d(rows: Tensor, cols: Tensor, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """``(cos, sin)``, ``(L, head_dim / 2)`` float64 each, of 2D rotary embeddings at positions ``(rows, cols)``
    ``(L,)`` (for :func:`ntm.nn.attention.apply_rope`).

    Channel pair ``i < head_dim / 4`` (the first half of the head) turns by ``rows * base^(-i / (head_dim / 4))``,
    pair ``head_dim / 4 + i`` (the second half) by ``cols * base^(-i / (head_dim / 4))``: each axis is a 1D RoPE on
    its half, so a query-key score depends on the row offset and the column offset only. Position ``(0, 0)``
    is no rotation. ``head_dim`` must be a multiple of 4.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64, device=rows.device) / quarter)
    angles = torch.cat([rows.to(torch.float64)[:, None] * freqs, cols.to(torch.float64)[:, None] * freqs], dim=-1)
    return torch.cos(angles), torch.sin(angles)


class TimeEmbedding(nn.Module):
    """``(B,)`` -> ``(B, dim)``: sinusoidal features through a small MLP."""

    def __init__(self, dim: int, freq_dim: int = 128) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels ``0..num_classes-1`` plus the null label ``num_classes``.

    The null label is what condition dropout and classifier-free guidance
    feed; ``labels=None`` means the null label for the whole batch.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        with full_parameters(self.table):
            self.table.reset_parameters()
            nn.init.normal_(self.table.weight, std=0.02)

    def null(self, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        if labels is None:
            labels = self.null(batch, self.table.weight.device)
        if labels.dtype != torch.long:
            raise TypeError(f"class labels must be int64, got {labels.dtype}")
        if (labels < 0).any() or (labels > self.num_classes).any():
            raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null)")
        return self.table(labels)


class ConditionEmbedding(nn.Module):
    """``cond`` -> the ``(B, dim)`` condition part of a component's adaLN context (zeros without a condition).

    ``cond`` is ``None``, ``(B,)`` int64 labels or a :class:`~ntm.conditioning.condition.Condition`:

    * labels go through the :class:`LabelEmbedding` table (``num_classes > 0``), exactly as
      class-conditional models always did; ``None`` is the null label;
    * a Condition's ``pooled`` ``(B, cond_dim)`` goes through a Linear (``cond_dim > 0``);
    * a Condition's ``tokens`` ``(B, L, cond_dim)`` are projected to ``dim`` by :meth:`tokens`
      (``cond_len > 0``) for the cross-attention sublayers of :class:`~ntm.nn.layers.AdaLNBlock`.

    With ``cond_dim = cond_len = 0`` no module beyond the label table is created, so
    class-label and unconditional components keep their parameters (and their
    initialisation's random draws) exactly. A condition the embedding was not built
    for is read as "no condition" (zeros), as unconditional models always ignored labels;
    ``None`` on a text-conditioned component is that zero condition too (an
    :class:`~ntm.model.NTM` never passes it: it encodes ``None`` as its learned null).
    """

    def __init__(self, num_classes: int, dim: int, cond_dim: int = 0, cond_len: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.labels = LabelEmbedding(num_classes, dim) if num_classes > 0 else None
        self.pooled = nn.Linear(cond_dim, dim) if cond_dim > 0 else None
        self.token_proj = nn.Linear(cond_dim, dim) if cond_dim > 0 and cond_len > 0 else None

    @property
    def has_tokens(self) -> bool:
        """Whether :meth:`tokens` gives context tokens (the blocks then carry cross-attention)."""
        return self.token_proj is not None

    def forward(self, cond, batch: int, like: Tensor) -> Tensor:
        if cond is not None and not isinstance(cond, Tensor):  # an encoded Condition
            if self.pooled is None:
                return torch.zeros(batch, self.dim, dtype=like.dtype, device=like.device)
            return self.pooled(cond.pooled.to(self.pooled.weight.dtype)).to(like.dtype)
        if cond is not None and cond.ndim != 1:
            raise TypeError(f"cond must be (B,) labels or an encoded Condition, got a tensor of shape {tuple(cond.shape)} "
                            "(encode token ids with NTM.encode first)")
        if self.labels is None:
            return torch.zeros(batch, self.dim, dtype=like.dtype, device=like.device)
        return self.labels(cond, batch).to(like.dtype)

    def tokens(self, cond) -> tuple[Tensor, Tensor] | None:
        """``(tokens (B, L, dim), mask (B, L) bool)`` of an encoded Condition with tokens; ``None`` otherwise."""
        if self.token_proj is None or cond is None or isinstance(cond, Tensor) or cond.tokens is None:
            return None
        return self.token_proj(cond.tokens.to(self.token_proj.weight.dtype)), cond.mask
