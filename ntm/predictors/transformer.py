"""Deep full-attention transformer predictors.

``transformer`` is Markov: it sees the tokens of the current level ``u_t``.
``trajectory`` also attends to every noisier level of the same trajectory
through a block-causal mask: one teacher-forced pass trains all K steps, and
a KV cache carries the noisier levels while sampling. Both are conditioned on
``t``, ``s`` (so one model serves every K) and the condition: a class label
with a learned null label, or an encoded Condition (pooled vector in the adaLN
context, tokens through cross-attention, whose keys are the same for every
level and never enter the KV cache).

Options of both (docs/math.md §5, "Predictor network options"; the defaults are the network they always were):
``positions`` (learned absolute vectors | 2D RoPE over the token grid), ``num_kv_heads`` (grouped-query
attention), ``time`` (adaLN modulation | the context added to the token stream) and ``text`` (cross-attention
| the caption's tokens concatenated in front of the sequence), the paper's choices being rope-2d, 8 KV heads,
additive and concat (Table 4, §C.1).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pydantic
import torch
from torch import Tensor

from ntm.distributions import Distribution
from ntm.nn import KVCache
from ntm.nn.backbone import TextConditioning, TimeConditioning, TokenTransformer
from ntm.predictors.base import PREDICTORS, Predictor, PredictorConfig
from ntm.predictors.heads import HEADS, GaussianHeadConfig
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig

_GAUSSIAN_HEAD_FIELDS = ("parameterization", "sigma")
"""Fields of the predictor before the head slot; they are ``head:gaussian``'s now."""


class TransformerPredictorConfig(PredictorConfig):
    depth: int = pydantic.Field(6, ge=1)
    """Number of transformer layers."""
    width: int = pydantic.Field(128, ge=8)
    """Hidden width."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads (must divide width)."""
    mlp_ratio: float = pydantic.Field(4.0, gt=0)
    """MLP hidden size as a multiple of width."""
    head: HEADS.field() = GaussianHeadConfig()
    """The output distribution read from the network: gaussian (§5; parameterization, sigma) mixture or logistic-mixture (§12)."""
    positions: Literal["learned", "rope-2d"] = "learned"
    """'learned': absolute position vectors added to the tokens; 'rope-2d': rotary embeddings of each token's (row, col) on the token grid in every self-attention (the paper's, Table 4), half the head dim per axis; needs width / num_heads divisible by 4."""
    grid: tuple[int, int] | None = None
    """Token grid (rows, cols) read by positions 'rope-2d' (rows x cols = the token count); unset: the model dims' grid if they carry one, else a square grid when the token count is a square, else one row."""
    num_kv_heads: int | None = pydantic.Field(None, ge=1)
    """Key/value heads of the self-attention (must divide num_heads): fewer than num_heads is grouped-query attention (the paper: 8); unset: num_heads, plain multi-head attention."""
    time: TimeConditioning = "adaln"
    """'adaln': the time and condition context modulates every LayerNorm (adaLN-Zero); 'additive': it is added to the token stream once and the blocks are plain pre-norm blocks (the paper's added time embedding, §C.1)."""
    text: TextConditioning = "cross-attention"
    """Condition tokens (an encoded caption): 'cross-attention' sublayers read them; 'concat': projected and placed in front of the sequence in every self-attention, cut from the output (the paper, §C.1). No effect without condition tokens."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Read configs written before the head slot: ``parameterization`` / ``sigma`` at the predictor's top level
        are ``head:gaussian``'s fields (merged into the given Gaussian head, if any)."""
        if not isinstance(data, dict) or not any(k in data for k in _GAUSSIAN_HEAD_FIELDS):
            return data
        moved = {k: data[k] for k in _GAUSSIAN_HEAD_FIELDS if k in data}
        rest = {k: v for k, v in data.items() if k not in moved}
        head = rest.get("head", {"name": "gaussian"})
        if isinstance(head, ComponentConfig):
            head = HEADS.dump(head)
        if not isinstance(head, dict) or head.get("name") != "gaussian":
            raise ValueError(f"{', '.join(moved)} belong to head:gaussian, not to {head!r}")
        return {**rest, "head": {**head, **moved}}

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerPredictorConfig":
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.positions == "rope-2d" and (self.width // self.num_heads) % 4:
            raise ValueError(f"positions 'rope-2d' needs a head dimension (width / num_heads = "
                             f"{self.width // self.num_heads}) divisible by 4")
        if self.grid is not None and self.positions != "rope-2d":
            raise ValueError(f"grid {self.grid} is read by positions 'rope-2d' only (positions is {self.positions!r})")
        if self.grid is not None and min(self.grid) < 1:
            raise ValueError(f"grid {self.grid} must have at least one row and one column")
        return self

    def output_distribution(self) -> type[Distribution]:
        return self.head.distribution_class()

    def build(self, dims: ModelDims) -> "TransformerPredictor":
        return TransformerPredictor(self, dims)


def token_grid(dims: ModelDims, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(rows, cols)`` token grid of ``dims`` for 2D RoPE: ``grid`` when given (one-line ``ValueError`` unless
    it holds ``dims.num_tokens``), else ``dims.grid`` when the dims carry one, else square when ``num_tokens``
    is a perfect square (every square image at any patch size), else one row of ``num_tokens`` (a 1D RoPE
    on the column half: points, one token per coordinate)."""
    grid = grid if grid is not None else dims.grid
    n = dims.num_tokens
    if grid is not None:
        rows, cols = grid
        if rows * cols != n:
            raise ValueError(f"token grid {rows}x{cols} does not hold the model's {n} tokens")
        return int(rows), int(cols)
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


@PREDICTORS.register("transformer", TransformerPredictorConfig)
class TransformerPredictor(Predictor):
    """Markov predictor: full attention over the ``N`` tokens of ``u_t``."""

    def __init__(self, config: TransformerPredictorConfig, dims: ModelDims) -> None:
        super().__init__()
        self.config = config
        self.head = config.head.build(dims)
        self.net = TokenTransformer(
            dims.token_dim, dims.num_tokens, self.head.raw_dim, width=config.width, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=dims.num_classes, num_times=2,
            cond_dim=dims.cond_dim, cond_len=dims.cond_len, positions=config.positions,
            grid=token_grid(dims, config.grid) if config.positions == "rope-2d" else None,
            num_kv_heads=config.num_kv_heads, time=config.time, text=config.text,
        )

    def _context(self, t: Tensor, s: Tensor, cond: Tensor | None) -> Tensor:
        return self.net.context((t, s), cond)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Distribution:
        raw = self.net(u_t, self._context(t, s, cond)[:, None], cond=cond)
        return self.head(raw, u_t, t, s)


class TrajectoryPredictorConfig(TransformerPredictorConfig):
    def build(self, dims: ModelDims) -> "TrajectoryPredictor":
        return TrajectoryPredictor(self, dims)


@PREDICTORS.register("trajectory", TrajectoryPredictorConfig)
class TrajectoryPredictor(TransformerPredictor):
    """Whole-trajectory context: level ``k`` attends to levels ``k .. K`` (block-causal).

    With ``text: concat`` the caption's tokens are a prefix that every level reads and that reads only itself
    (so it is the same for every level and the first sampling step caches it with the level-``K`` keys)."""

    markov = False

    def forward_trajectory(self, u_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Distribution:
        k, b, n, d = u_levels.shape
        seq = u_levels.flip(0).permute(1, 0, 2, 3).reshape(b, k * n, d)  # levels K, K-1, ..., 1
        t = times[1:].flip(0).to(u_levels.dtype)
        s = times[:-1].flip(0).to(u_levels.dtype)
        c = torch.stack([self._context(t[i].expand(b), s[i].expand(b), cond) for i in range(k)], dim=1)
        c = c.repeat_interleave(n, dim=1)  # (B, K*N, W): each token gets its level's context
        level = torch.arange(k, device=u_levels.device).repeat_interleave(n)
        mask = level[:, None] >= level[None, :]  # see own level and every noisier one
        raw = self.net(seq, c, mask=mask, cond=cond, text_reads_state=False)
        raw = raw.reshape(b, k, n, self.head.raw_dim).permute(1, 0, 2, 3).flip(0)
        t_all = times[1:].to(u_levels.dtype).repeat_interleave(b)
        s_all = times[:-1].to(u_levels.dtype).repeat_interleave(b)
        g = self.head(raw.flatten(0, 1), u_levels.flatten(0, 1), t_all, s_all)
        return g.map(lambda z: z.unflatten(0, (k, b)))

    def new_cache(self) -> KVCache:
        return KVCache()

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache: KVCache) -> Distribution:
        raw = self.net(u_t, self._context(t, s, cond)[:, None], mask="full", cache=cache, cond=cond,
                       text_reads_state=False)
        return self.head(raw, u_t, t, s)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Distribution:
        """A single level with no noisier context (exactly the first sampling step)."""
        return self.step(u_t, t, s, cond, cache=None)
