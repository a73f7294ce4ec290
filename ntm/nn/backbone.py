"""A token transformer conditioned on times and a label: the shared deep backbone."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ntm.nn.attention import KVCache
from ntm.nn.embeddings import ConditionEmbedding, TimeEmbedding
from ntm.nn.layers import AdaLNBlock, FinalLayer


class TokenTransformer(nn.Module):
    """``(B, L, d_in)`` tokens + a context ``(B, 1 or L, width)`` -> ``(B, L, d_out)``.

    The context is built by :meth:`context` from ``num_times`` times (each
    with its own embedding) and a class label. ``L`` may be a multiple of
    ``num_tokens`` (several states in one sequence); positions repeat per state.
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
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.in_proj = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.time_embeds = nn.ModuleList(TimeEmbedding(width) for _ in range(num_times))
        self.cond_embed = ConditionEmbedding(num_classes, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width, num_heads, width, mlp_ratio, layer_index=i) for i in range(depth))
        self.final = FinalLayer(width, width, out_dim)

    def context(self, times: tuple[Tensor, ...], cond: Tensor | None) -> Tensor:
        """``(B, width)`` from ``num_times`` ``(B,)`` times and optional labels."""
        c = sum(embed(t) for embed, t in zip(self.time_embeds, times, strict=True))
        return c + self.cond_embed(cond, times[0].shape[0], like=c)

    def forward(
        self, x: Tensor, c: Tensor, mask: Any = "full", cache: KVCache | None = None, return_hidden: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        h = self.in_proj(x.to(self.in_proj.weight.dtype)) + self.pos.repeat(1, x.shape[1] // self.num_tokens, 1)
        for block in self.blocks:
            h = block(h, c, mask=mask, cache=cache)
        out = self.final(h, c)
        return (out, h) if return_hidden else out
