"""Multi-head attention on ``scaled_dot_product_attention`` with an optional KV cache."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.nn.init import reset_children

MaskKind = Literal["full", "causal"]


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
    ``(L, L_total)`` tensor (True = may attend). With ``cache``, the new
    positions' keys/values are appended first; new queries then see every
    cached position plus, under ``"causal"``, the new ones up to themselves.
    """

    def __init__(self, dim: int, num_heads: int, layer_index: int = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.layer_index = layer_index
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: MaskKind | Tensor = "full", cache: KVCache | None = None) -> Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
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
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
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
