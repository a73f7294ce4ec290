"""Multi-head attention on ``scaled_dot_product_attention`` with an optional KV cache.

:class:`Attention` offers grouped-query attention (``num_kv_heads < num_heads``: keys and values projected to
fewer heads, each shared by ``num_heads // num_kv_heads`` query heads) and rotary position embeddings
(``rope=(cos, sin)``, applied to queries and keys by :func:`apply_rope`; the angles come from
:func:`ntm.nn.embeddings.rope_2d`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.nn.init import reset_children

MaskKind = Literal["full", "causal"]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``(..., L, head_dim)`` pair by pair: channels ``(2i, 2i + 1)`` by the angle whose ``cos`` /
    ``sin`` are entry ``i`` of ``(L, head_dim / 2)`` (or anything broadcasting to ``x[..., ::2]``).

    Computed in at least float32 (``x`` in bfloat16 is rotated in float32 and cast back); a rotation keeps
    every pair's norm, and ``rope(q, p) . rope(k, p')`` depends on ``p' - p`` only.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dtype).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.to(dtype), sin.to(dtype)
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class KVCache:
    """Keys and values of earlier positions, one slot per attention layer.

    Positions are appended in order; a query attends to every cached
    position and to the positions it brings itself (see :class:`Attention`).
    """

    def __init__(self) -> None:
        self._kv: dict[int, tuple[Tensor, Tensor]] = {}

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self._kv:
            k0, v0 = self._kv[layer]
            k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)
        self._kv[layer] = (k, v)
        return k, v

    def past(self, layer: int) -> int:
        """How many positions ``layer`` has cached."""
        return self._kv[layer][0].shape[2] if layer in self._kv else 0

    def map_batch(self, fn) -> None:
        """Apply ``fn`` to the batch axis of every cached tensor (e.g. reorder)."""
        self._kv = {i: (fn(k), fn(v)) for i, (k, v) in self._kv.items()}


class Attention(nn.Module):
    """Self-attention over ``(B, L, dim)``.

    ``mask`` is ``"full"``, ``"causal"`` (position i sees j <= i) or a boolean
    tensor broadcasting to ``(B, num_heads, L, L_total)`` (e.g. ``(L, L_total)``;
    True = may attend). With ``cache``, the new
    positions' keys/values are appended first; new queries then see every
    cached position plus, under ``"causal"``, the new ones up to themselves.

    ``num_kv_heads`` (default ``num_heads``: multi-head attention with the fused
    ``qkv`` projection) below ``num_heads`` is grouped-query attention: keys and
    values have ``num_kv_heads`` heads (so does the cache), query head ``h``
    reads key/value head ``h // (num_heads // num_kv_heads)``. Setting it (even
    to ``num_heads``) uses separate ``q`` and ``kv`` projections.
    """

    def __init__(self, dim: int, num_heads: int, layer_index: int = 0, num_kv_heads: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        if num_kv_heads is not None and (num_kv_heads < 1 or num_heads % num_kv_heads):
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.layer_index = layer_index
        self.fused = num_kv_heads is None
        if self.fused:  # the fused projection every model had: its weights and draws are unchanged
            self.qkv = nn.Linear(dim, 3 * dim)
        else:  # separate query and key/value projections, the latter to num_kv_heads heads
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * self.num_kv_heads * (dim // num_heads))
        self.proj = nn.Linear(dim, dim)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q (B, H, L, hd)``, ``k, v (B, H_kv, L, hd)``."""
        b, length, dim = x.shape
        hd = dim // self.num_heads
        if self.fused:
            q, k, v = self.qkv(x).reshape(b, length, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
            return q, k, v
        q = self.q(x).reshape(b, length, self.num_heads, hd).transpose(1, 2)
        k, v = self.kv(x).reshape(b, length, 2, self.num_kv_heads, hd).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(
        self, x: Tensor, mask: MaskKind | Tensor = "full", cache: KVCache | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``rope``: ``(cos, sin)`` of the new positions, ``(L, head_dim / 2)`` each, rotating queries and keys
        (keys are cached rotated, so cached positions keep theirs)."""
        b, length, dim = x.shape
        q, k, v = self._project(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.past(self.layer_index)
            k, v = cache.append(self.layer_index, k, v)
        attn_mask = None
        is_causal = False
        if isinstance(mask, Tensor):
            attn_mask = mask
        elif mask == "causal":
            if past == 0:
                is_causal = True
            elif length > 1:
                total = past + length
                attn_mask = torch.ones(length, total, dtype=torch.bool, device=x.device).tril(diagonal=past)
        elif mask != "full":
            raise ValueError(f"unknown attention mask {mask!r}")
        extra = {}
        if self.num_kv_heads != self.num_heads:
            if attn_mask is None:  # torch's grouped-query support: no copies of K/V
                extra["enable_gqa"] = True
            else:  # a mask tensor: K/V repeated per query group, so every kernel that takes a mask stays open
                group = self.num_heads // self.num_kv_heads
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **extra)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class CrossAttention(nn.Module):
    """Queries ``(B, L, dim)`` attend to context tokens ``(B, M, dim)`` where ``mask`` ``(B, M)`` is True.

    The keys and values come from the context alone, which is fixed per example:
    no causal mask and no KV cache apply (a causal or cached self-attention next to
    it is unaffected). The output projection starts at zero, so a fresh sublayer
    adds nothing. Every example must have at least one unmasked context token.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset_children(self)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, length, dim = x.shape
        m = context.shape[1]
        heads, hd = self.num_heads, dim // self.num_heads
        q = self.q(x).reshape(b, length, heads, hd).transpose(1, 2)
        k, v = self.kv(context.to(x.dtype)).reshape(b, m, 2, heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))
