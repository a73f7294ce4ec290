"""A token transformer conditioned on times and a condition (labels or an encoded one): the shared deep backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ntm.nn.attention import KVCache
from ntm.nn.embeddings import ConditionEmbedding, TimeEmbedding
from ntm.nn.init import reset
from ntm.nn.layers import AdaLNBlock, FinalLayer

if TYPE_CHECKING:
    from ntm.conditioning.condition import Cond


class TokenTransformer(nn.Module):
    """``(B, L, d_in)`` tokens + a context ``(B, 1 or L, width)`` -> ``(B, L, d_out)``.

    The context is built by :meth:`context` from ``num_times`` times (each
    with its own embedding) and the condition (labels, or a Condition's pooled
    vector). ``L`` may be a multiple of ``num_tokens`` (several states in one
    sequence); positions repeat per state. With ``cond_len > 0`` every block has a
    cross-attention sublayer reading the Condition's tokens, passed to
    :meth:`forward` as ``cond`` (the same for every state of the sequence).
    """

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        out_dim: int,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        num_times: int,
        cond_dim: int = 0,
        cond_len: int = 0,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.in_proj = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.time_embeds = nn.ModuleList(TimeEmbedding(width) for _ in range(num_times))
        self.cond_embed = ConditionEmbedding(num_classes, width, cond_dim, cond_len)
        cross = self.cond_embed.has_tokens
        self.blocks = nn.ModuleList(
            AdaLNBlock(width, num_heads, width, mlp_ratio, layer_index=i, cross_attention=cross) for i in range(depth)
        )
        self.final = FinalLayer(width, width, out_dim)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset(self.in_proj)
        self.pos.copy_(torch.randn(self.pos.shape) * 0.02)
        for module in (self.time_embeds, self.cond_embed, self.blocks, self.final):
            reset(module)

    def context(self, times: tuple[Tensor, ...], cond: Cond) -> Tensor:
        """``(B, width)`` from ``num_times`` ``(B,)`` times and the condition (``None``, labels or a Condition)."""
        c = sum(embed(t) for embed, t in zip(self.time_embeds, times, strict=True))
        return c + self.cond_embed(cond, times[0].shape[0], like=c)

    def forward(
        self, x: Tensor, c: Tensor, mask: Any = "full", cache: KVCache | None = None, return_hidden: bool = False,
        cond: Cond = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``cond``: the condition whose tokens the cross-attention reads (ignored without cross-attention)."""
        h = self.in_proj(x.to(self.in_proj.weight.dtype)) + self.pos.repeat(1, x.shape[1] // self.num_tokens, 1)
        context = self.cond_embed.tokens(cond)
        for block in self.blocks:
            h = block(h, c, mask=mask, cache=cache, context=context)
        out = self.final(h, c)
        return (out, h) if return_hidden else out
