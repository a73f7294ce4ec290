"""A token transformer conditioned on times and a condition (labels or an encoded one): the shared deep backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from ntm.nn.attention import KVCache
from ntm.nn.embeddings import ConditionEmbedding, TimeEmbedding, grid_positions, rope_2d
from ntm.nn.init import reset
from ntm.nn.layers import AdaLNBlock, FinalLayer

if TYPE_CHECKING:
    from ntm.conditioning.condition import Cond

Positions = Literal["learned", "rope-2d"]
TimeConditioning = Literal["adaln", "additive"]
TextConditioning = Literal["cross-attention", "concat"]
ROPE_BASE = 10_000.0
"""The base of the 2D RoPE frequencies (:func:`~ntm.nn.embeddings.rope_2d`)."""


class TokenTransformer(nn.Module):
    """``(B, L, d_in)`` tokens + a context ``(B, 1 or L, width)`` -> ``(B, L, d_out)``.

    The context is built by :meth:`context` from ``num_times`` times (each
    with its own embedding) and the condition (labels, or a Condition's pooled
    vector). ``L`` may be a multiple of ``num_tokens`` (several states in one
    sequence); positions repeat per state. With ``cond_len > 0`` every block has a
    cross-attention sublayer reading the Condition's tokens, passed to
    :meth:`forward` as ``cond`` (the same for every state of the sequence).

    Options (the defaults are the network it always was, weight for weight):

    * ``positions``: ``"learned"`` absolute position vectors added to the tokens, or
      ``"rope-2d"``: rotary embeddings of each token's ``(row, col)`` on the row-major
      ``grid`` (rows x cols = ``num_tokens``) in every self-attention, no position vector;
    * ``num_kv_heads``: grouped-query self-attention (``None``: ``num_heads``, plain MHA);
    * ``time``: ``"adaln"`` modulates every LayerNorm with the context, ``"additive"``
      adds the context to the token stream once, after the input projection, and the
      blocks are plain pre-norm blocks;
    * ``text``: ``"cross-attention"`` sublayers read the condition's tokens, or
      ``"concat"``: the projected condition tokens are a prefix of the sequence in
      every self-attention (padding masked as keys) and are cut from the output.
      Prefix tokens carry no position (learned: no vector; rope-2d: position
      ``(0, 0)``, unrotated) and take the condition-only context
      (:meth:`text_context`: no time), so they are the same for every state of the
      sequence. Whether they read the state tokens is :meth:`forward`'s
      ``text_reads_state``; with a KV cache they enter on the first call (empty
      cache) and are cached with the keys.
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
        positions: Positions = "learned",
        grid: tuple[int, int] | None = None,
        num_kv_heads: int | None = None,
        time: TimeConditioning = "adaln",
        text: TextConditioning = "cross-attention",
    ) -> None:
        super().__init__()
        if positions not in ("learned", "rope-2d") or time not in ("adaln", "additive") or \
                text not in ("cross-attention", "concat"):
            raise ValueError(f"unknown option: positions={positions!r}, time={time!r}, text={text!r}")
        self.num_tokens = num_tokens
        self.positions, self.time, self.text = positions, time, text
        self.in_proj = nn.Linear(token_dim, width)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        else:
            self.pos = None
            if grid is None:
                raise ValueError("positions 'rope-2d' needs the token grid (rows, cols)")
            self.head_dim = width // num_heads
            if self.head_dim % 4:
                raise ValueError(f"positions 'rope-2d' needs width / num_heads divisible by 4, got {self.head_dim}")
            self.grid_rows, self.grid_cols = grid_positions(num_tokens, grid)
        self._rope: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.time_embeds = nn.ModuleList(TimeEmbedding(width) for _ in range(num_times))
        self.cond_embed = ConditionEmbedding(num_classes, width, cond_dim, cond_len)
        cross = self.cond_embed.has_tokens and text == "cross-attention"
        modulation = time == "adaln"
        self.blocks = nn.ModuleList(
            AdaLNBlock(width, num_heads, width, mlp_ratio, layer_index=i, cross_attention=cross,
                       num_kv_heads=num_kv_heads, modulation=modulation)
            for i in range(depth)
        )
        self.final = FinalLayer(width, width, out_dim, modulation=modulation)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset(self.in_proj)
        if self.pos is not None:
            self.pos.copy_(torch.randn(self.pos.shape) * 0.02)
        for module in (self.time_embeds, self.cond_embed, self.blocks, self.final):
            reset(module)

    def context(self, times: tuple[Tensor, ...], cond: Cond) -> Tensor:
        """``(B, width)`` from ``num_times`` ``(B,)`` times and the condition (``None``, labels or a Condition)."""
        c = sum(embed(t) for embed, t in zip(self.time_embeds, times, strict=True))
        return c + self.cond_embed(cond, times[0].shape[0], like=c)

    def text_context(self, cond: Cond, batch: int, like: Tensor) -> Tensor:
        """``(B, 1, width)``: the context of ``text: concat``'s prefix tokens, the condition's part of
        :meth:`context` without any time."""
        return self.cond_embed(cond, batch, like=like)[:, None]

    def _rope_angles(self, text_len: int, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` ``(text_len + length, head_dim / 2)``: the prefix at ``(0, 0)``, then the state tokens'
        grid positions (repeated per state); computed once in float64 on the CPU, kept on ``like``'s device in
        at least float32."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        key = (text_len, length, like.device, dtype)
        if key not in self._rope:
            reps = length // self.num_tokens
            zeros = torch.zeros(text_len, dtype=torch.long, device="cpu")
            rows = torch.cat([zeros, self.grid_rows.repeat(reps)])
            cols = torch.cat([zeros, self.grid_cols.repeat(reps)])
            cos, sin = rope_2d(rows, cols, self.head_dim, ROPE_BASE)
            self._rope[key] = (cos.to(like.device, dtype), sin.to(like.device, dtype))
        return self._rope[key]

    def forward(
        self, x: Tensor, c: Tensor, mask: Any = "full", cache: KVCache | None = None, return_hidden: bool = False,
        cond: Cond = None, text_reads_state: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``cond``: the condition whose tokens the cross-attention (or the ``concat`` prefix) reads.

        ``text_reads_state`` (``text: concat`` only): whether the prefix tokens attend to the state tokens
        (a bidirectional pass over one state) or only to each other (what a block-causal or cached pass needs:
        the prefix is then the same whatever the states are, like a causal prompt)."""
        h = self.in_proj(x.to(self.in_proj.weight.dtype))
        if self.pos is not None:
            h = h + self.pos.repeat(1, x.shape[1] // self.num_tokens, 1)
        context = self.cond_embed.tokens(cond)
        prefix = 0
        if self.text == "concat" and context is not None:
            h, c, mask, prefix = self._with_prefix(h, c, mask, cache, context, cond, text_reads_state)
            context = None
        if self.time == "additive":
            h = h + c
        rope = None if self.pos is not None else self._rope_angles(prefix, h.shape[1] - prefix, h)
        for block in self.blocks:
            h = block(h, c, mask=mask, cache=cache, context=context, rope=rope)
        if prefix:
            h, c = h[:, prefix:], c[:, prefix:]
        out = self.final(h, c)
        return (out, h) if return_hidden else out

    def _with_prefix(
        self, h: Tensor, c: Tensor, mask: Any, cache: KVCache | None, context: tuple[Tensor, Tensor], cond: Cond,
        text_reads_state: bool,
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """``text: concat``: ``(h, c, mask, prefix length)`` of the sequence with the condition tokens in front
        (on a cache's first call; later calls find them cached), the mask a ``(B, 1, L_q, L_k)`` bool tensor."""
        tokens, token_mask = context
        b, length = h.shape[:2]
        m = tokens.shape[1]
        past = 0 if cache is None else cache.past(self.blocks[0].attn.layer_index)
        state = _state_mask(mask, length, past if past == 0 else past - m, h.device)  # (length, keys of states)
        if past:  # the prefix is in the cache (its first m keys): the new state tokens read it, padding masked
            keys = torch.cat([token_mask, token_mask.new_ones(b, state.shape[1])], dim=1)
            return h, c, keys[:, None, None, :] & torch.cat([state.new_ones(length, m), state], 1)[None, None], 0
        tc = self.text_context(cond, b, like=c).to(c.dtype)
        h = torch.cat([tokens.to(h.dtype), h], dim=1)
        c = torch.cat([tc.expand(b, m, -1), c.expand(b, length, -1)], dim=1)
        text_rows = torch.cat([torch.ones(m, m, dtype=torch.bool, device=h.device),
                               torch.full((m, length), text_reads_state, dtype=torch.bool, device=h.device)], 1)
        state_rows = torch.cat([torch.ones(length, m, dtype=torch.bool, device=h.device), state], 1)
        allowed = torch.cat([text_rows, state_rows], 0)  # (m + length, m + length)
        keys = torch.cat([token_mask, token_mask.new_ones(b, length)], dim=1)
        return h, c, allowed[None, None] & keys[:, None, None, :], m


def _state_mask(mask: Any, length: int, past: int, device: torch.device) -> Tensor:
    """``mask`` (``"full"``, ``"causal"`` or a bool ``(length, past + length)`` tensor) over the state tokens alone,
    as a bool ``(length, past + length)`` tensor (``past``: state tokens already cached)."""
    if isinstance(mask, Tensor):
        return mask.to(torch.bool)
    full = torch.ones(length, past + length, dtype=torch.bool, device=device)
    if mask == "full":
        return full
    if mask == "causal":
        return full.tril(diagonal=past)
    raise ValueError(f"unknown attention mask {mask!r}")
