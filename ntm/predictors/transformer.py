"""Deep full-attention transformer predictors.

``transformer`` is Markov: it sees the tokens of the current level ``u_t``.
``trajectory`` also attends to every noisier level of the same trajectory
through a block-causal mask: one teacher-forced pass trains all K steps, and
a KV cache carries the noisier levels while sampling. Both are conditioned on
``t``, ``s`` (so one model serves every K) and the condition: a class label
with a learned null label, or an encoded Condition (pooled vector in the adaLN
context, tokens through cross-attention, whose keys are the same for every
level and never enter the KV cache).
"""

from __future__ import annotations

from typing import Any

import pydantic
import torch
from torch import Tensor

from ntm.distributions import Distribution
from ntm.nn import KVCache
from ntm.nn.backbone import TokenTransformer
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
        return self

    def output_distribution(self) -> type[Distribution]:
        return self.head.distribution_class()

    def build(self, dims: ModelDims) -> "TransformerPredictor":
        return TransformerPredictor(self, dims)


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
            cond_dim=dims.cond_dim, cond_len=dims.cond_len,
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
    """Whole-trajectory context: level ``k`` attends to levels ``k .. K`` (block-causal)."""

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
        raw = self.net(seq, c, mask=mask, cond=cond).reshape(b, k, n, self.head.raw_dim).permute(1, 0, 2, 3).flip(0)
        t_all = times[1:].to(u_levels.dtype).repeat_interleave(b)
        s_all = times[:-1].to(u_levels.dtype).repeat_interleave(b)
        g = self.head(raw.flatten(0, 1), u_levels.flatten(0, 1), t_all, s_all)
        return g.map(lambda z: z.unflatten(0, (k, b)))

    def new_cache(self) -> KVCache:
        return KVCache()

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache: KVCache) -> Distribution:
        raw = self.net(u_t, self._context(t, s, cond)[:, None], mask="full", cache=cache, cond=cond)
        return self.head(raw, u_t, t, s)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Distribution:
        """A single level with no noisier context (exactly the first sampling step)."""
        return self.step(u_t, t, s, cond, cache=None)
