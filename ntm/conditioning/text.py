"""``conditioner:small-text``: captions -> open_clip token ids -> a small transformer trained with the model.

Token ids. Captions are tokenized with open_clip's BPE tokenizer
(:class:`open_clip.tokenizer.SimpleTokenizer`, whose vocabulary ships with the
package: nothing is downloaded) into rows of ``context_length`` int64 ids:
``<start_of_text> ... <end_of_text>`` then padding ``0``, exactly as
``open_clip.tokenize`` lays them out. A longer caption is cut to
``context_length - 2`` BPE tokens (its end-of-text token kept); the first
truncation of a conditioner prints one warning line, later ones are silent.
A null row, every entry :data:`~ntm.conditioning.base.NULL_TOKEN` (``-1``),
stands for "no condition": a caption dropped by condition dropout, and an
empty (or all-whitespace, or missing) caption.

Encoder. :class:`SmallTextEncoder` embeds the ids, adds learned positions and
runs ``depth`` pre-norm transformer layers with a *causal* mask (as CLIP's text
tower does), then a LayerNorm. ``Condition.tokens`` are the features of every
position, ``mask`` marks the positions up to the end-of-text token, and
``pooled`` is the feature of the end-of-text token. Why that and not a masked
mean: under the causal mask it is the one position that has read the whole
caption, and padding (after it) can never leak into it or into any real
token. A null row's condition is learned: a ``pooled`` vector and one token
(mask True at position 0 only), both trained by condition dropout.
"""

from __future__ import annotations

import functools
import sys
from typing import ClassVar

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.conditioning.base import (
    CONDITIONERS,
    BatchField,
    NULL_TOKEN,
    ConditionEncoder,
    Conditioner,
    ConditionerConfig,
)
from ntm.conditioning.condition import Condition
from ntm.nn.attention import Attention
from ntm.nn.init import full_parameters, reset
from ntm.nn.layers import MLP
from ntm.spec import ModelDims

VOCAB_SIZE = 49408
"""open_clip's BPE vocabulary (49152 merges and byte tokens, plus start and end of text)."""
SOT_TOKEN = 49406
"""``<start_of_text>``."""
EOT_TOKEN = 49407
"""``<end_of_text>``: the largest id, so ``ids.argmax(-1)`` finds it (as CLIP pools)."""


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """open_clip's ``SimpleTokenizer`` (imported on first use: importing open_clip takes seconds)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    if (tokenizer.vocab_size, tokenizer.sot_token_id, tokenizer.eot_token_id) != (VOCAB_SIZE, SOT_TOKEN, EOT_TOKEN):
        raise RuntimeError(f"unexpected open_clip tokenizer: vocabulary {tokenizer.vocab_size}, "
                           f"start/end ids {tokenizer.sot_token_id}/{tokenizer.eot_token_id}")
    return tokenizer


@functools.lru_cache(maxsize=65536)
def _bpe(caption: str) -> tuple[int, ...]:
    return tuple(clip_tokenizer().encode(caption))


def is_empty(caption: str | None) -> bool:
    """A missing, empty or all-whitespace caption: the null condition."""
    return caption is None or not caption.strip()


def tokenize(captions: list[str | None], context_length: int) -> tuple[Tensor, int]:
    """``(B, context_length)`` int64 token ids (null rows for empty captions) and the longest truncated length.

    The second value is the BPE length (start and end tokens included) of the
    longest caption that did not fit, 0 when none was cut.
    """
    ids = torch.zeros(len(captions), context_length, dtype=torch.long)
    longest = 0
    for i, caption in enumerate(captions):
        if is_empty(caption):
            ids[i] = NULL_TOKEN
            continue
        body = _bpe(caption)
        if len(body) + 2 > context_length:
            longest = max(longest, len(body) + 2)
            body = body[: context_length - 2]
        ids[i, : len(body) + 2] = torch.tensor([SOT_TOKEN, *body, EOT_TOKEN])
    return ids, longest


class SmallTextConfig(ConditionerConfig):
    dropout: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    """Fraction of captions replaced by the null condition (for classifier-free guidance)."""
    context_length: int = pydantic.Field(32, ge=3)
    """Token ids per caption (start and end tokens included); longer captions are truncated."""
    width: int = pydantic.Field(128, ge=8)
    """Width of the text encoder: the features of Condition.pooled and .tokens (ModelDims.cond_dim)."""
    depth: int = pydantic.Field(2, ge=1)
    """Transformer layers of the text encoder."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads of the text encoder (must divide width)."""

    reads: ClassVar[BatchField] = "caption"

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> SmallTextConfig:
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")
        return self

    def build(self) -> SmallTextConditioner:
        return SmallTextConditioner(self)

    def model_dims(self, num_classes: int) -> dict[str, int]:
        return {"cond_dim": self.width, "cond_len": self.context_length}

    def encoder(self, dims: ModelDims) -> SmallTextEncoder:
        return SmallTextEncoder(self)


@CONDITIONERS.register("small-text", SmallTextConfig)
class SmallTextConditioner(Conditioner):
    """Captions -> ``(B, context_length)`` token ids; each caption independently becomes the null row with
    probability ``dropout`` (the mask drawn from ``generator``, like the class conditioner's)."""

    reads: ClassVar[BatchField] = "caption"

    def __init__(self, config: SmallTextConfig) -> None:
        self.config = config
        self.warned = False

    def inputs(self, captions: list[str | None] | None, num_classes: int = 0) -> Tensor | None:
        """Token ids without dropout; ``None`` (the model's null condition) for a batch without captions."""
        if captions is None:
            return None
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, one per example, not one string")
        ids, longest = tokenize(list(captions), self.config.context_length)
        if longest and not self.warned:
            self.warned = True
            print(f"ntm: warning: a caption of {longest} tokens was truncated to conditioner.context_length = "
                  f"{self.config.context_length} (later truncations are not reported)", file=sys.stderr, flush=True)
        return ids

    def __call__(
        self, captions: list[str | None] | None, num_classes: int = 0, generator: torch.Generator | None = None
    ) -> Tensor | None:
        ids = self.inputs(captions, num_classes)
        if ids is None or self.config.dropout == 0:
            return ids
        device = generator.device if generator is not None else torch.device("cpu")
        drop = torch.rand(ids.shape[0], generator=generator, device=device).cpu() < self.config.dropout
        ids[drop] = NULL_TOKEN
        return ids


class TextBlock(nn.Module):
    """Pre-norm causal self-attention and MLP (the text encoder's layer)."""

    fsdp_unit: ClassVar[bool] = True

    def __init__(self, width: int, num_heads: int, layer_index: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads, layer_index=layer_index)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, 4 * width)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.norm1(h), mask="causal")
        return h + self.mlp(self.norm2(h))


class TokenTextEncoder(ConditionEncoder):
    """What every text encoder over open_clip token ids shares: reading the ids (null rows, end of text, mask)
    and the learned null condition (``null_pooled``, ``null_token`` parameters of the subclass; one null token,
    mask True at position 0 only). A subclass computes per-position features and calls :meth:`condition`."""

    context_length: int
    null_pooled: nn.Parameter
    null_token: nn.Parameter

    def null(self, batch: int) -> Condition:
        width, length = self.null_pooled.shape[0], self.context_length
        tokens = torch.cat([self.null_token.expand(batch, 1, width),
                            self.null_token.new_zeros(batch, length - 1, width)], dim=1)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=tokens.device)
        mask[:, 0] = True
        return Condition(self.null_pooled.expand(batch, width), tokens, mask)

    def read_ids(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ids padded to context_length, null rows (B,), end-of-text position (B,), mask (B, context_length))``;
        null rows read as padding (their features are replaced by :meth:`condition`)."""
        if ids.dtype != torch.long or ids.ndim != 2:
            raise TypeError(f"token ids must be a (B, L) int64 tensor, got {tuple(ids.shape)} {ids.dtype}")
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"token ids have {length} positions; this encoder reads at most {self.context_length}")
        null = (ids == NULL_TOKEN).all(dim=1)  # (B,)
        ids = F.pad(ids.clamp_min(0), (0, self.context_length - length))
        if bool(((ids.amax(dim=1) != EOT_TOKEN) & ~null).any()):  # EOT_TOKEN is the largest id
            raise ValueError(f"every non-null row of token ids must hold the end-of-text token {EOT_TOKEN} "
                             "and no larger id (tokenize captions with the conditioner)")
        end = ids.argmax(dim=1)  # the end-of-text position (the largest id)
        mask = torch.arange(self.context_length, device=ids.device)[None] <= end[:, None]
        return ids, null, end, mask

    def condition(self, h: Tensor, null: Tensor, end: Tensor, mask: Tensor) -> Condition:
        """Features ``h (B, context_length, width)`` -> the Condition pooled at the end of text, null rows
        replaced by the learned null."""
        pooled = h[torch.arange(h.shape[0], device=h.device), end]
        empty = self.null(h.shape[0])
        pooled = torch.where(null[:, None], empty.pooled.to(pooled.dtype), pooled)
        h = torch.where(null[:, None, None], empty.tokens.to(h.dtype), h)
        mask = torch.where(null[:, None], empty.mask, mask)
        return Condition(pooled, h, mask)


class SmallTextEncoder(TokenTextEncoder):
    """``(B, L)`` token ids (``L <= context_length``) -> :class:`Condition` with ``context_length`` tokens.

    ``pooled`` is the end-of-text token's feature, ``tokens`` every position's
    with ``mask`` True up to the end of text; null rows get the learned null.
    """

    def __init__(self, config: SmallTextConfig) -> None:
        super().__init__()
        width, self.context_length = config.width, config.context_length
        self.embed = nn.Embedding(VOCAB_SIZE, width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(1, config.context_length, width) * 0.01)
        self.blocks = nn.ModuleList(TextBlock(width, config.num_heads, i) for i in range(config.depth))
        self.norm = nn.LayerNorm(width)
        self.null_pooled = nn.Parameter(torch.randn(width) * 0.02)
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        with full_parameters(self.embed):
            self.embed.reset_parameters()
            nn.init.normal_(self.embed.weight, std=0.02)
        self.pos.copy_(torch.randn(self.pos.shape) * 0.01)
        reset(self.blocks)
        reset(self.norm)
        self.null_pooled.copy_(torch.randn(self.null_pooled.shape) * 0.02)
        self.null_token.copy_(torch.randn(self.null_token.shape) * 0.02)

    def forward(self, ids: Tensor) -> Condition:
        ids, null, end, mask = self.read_ids(ids)
        h = self.embed(ids) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.condition(self.norm(h), null, end, mask)


__all__ = [
    "EOT_TOKEN", "SOT_TOKEN", "VOCAB_SIZE", "SmallTextConditioner", "SmallTextConfig", "SmallTextEncoder",
    "TextBlock", "TokenTextEncoder", "clip_tokenizer", "is_empty", "tokenize",
]
