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

from typing import Literal

import pydantic
import torch
from torch import Tensor

from ntm.distributions import Gaussian
from ntm.nn import KVCache
from ntm.nn.backbone import TokenTransformer
from ntm.predictors.base import PREDICTORS, Predictor, PredictorConfig
from ntm.predictors.heads import Parameterization, gaussian_head
from ntm.spec import ModelDims


class TransformerPredictorConfig(PredictorConfig):
    depth: int = pydantic.Field(6, ge=1)
    """Number of transformer layers."""
    width: int = pydantic.Field(128, ge=8)
    """Hidden width."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads (must divide width)."""
    mlp_ratio: float = pydantic.Field(4.0, gt=0)
    """MLP hidden size as a multiple of width."""
    parameterization: Parameterization = "posterior"
    """'posterior': outputs x_hat and a log-scale correction read through the §4 posterior; 'direct': mu, log_sigma."""
    sigma: Literal["learned", "posterior"] = "learned"
    """'posterior' fixes sigma to the §4 posterior's (needs parameterization 'posterior'): the DDPM-style ablation."""

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerPredictorConfig":
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")
        if self.sigma == "posterior" and self.parameterization != "posterior":
            raise ValueError("sigma 'posterior' needs parameterization 'posterior'")
        return self

    def build(self, dims: ModelDims) -> "TransformerPredictor":
        return TransformerPredictor(self, dims)


@PREDICTORS.register("transformer", TransformerPredictorConfig)
class TransformerPredictor(Predictor):
    """Markov predictor: full attention over the ``N`` tokens of ``u_t``."""

    def __init__(self, config: TransformerPredictorConfig, dims: ModelDims) -> None:
        super().__init__()
        self.config = config
        self.net = TokenTransformer(
            dims.token_dim, dims.num_tokens, 2 * dims.token_dim, width=config.width, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=dims.num_classes, num_times=2,
            cond_dim=dims.cond_dim, cond_len=dims.cond_len,
        )

    def _context(self, t: Tensor, s: Tensor, cond: Tensor | None) -> Tensor:
        return self.net.context((t, s), cond)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        raw = self.net(u_t, self._context(t, s, cond)[:, None], cond=cond)
        return gaussian_head(raw, u_t, t, s, self.config.parameterization, self.config.sigma)


class TrajectoryPredictorConfig(TransformerPredictorConfig):
    def build(self, dims: ModelDims) -> "TrajectoryPredictor":
        return TrajectoryPredictor(self, dims)


@PREDICTORS.register("trajectory", TrajectoryPredictorConfig)
class TrajectoryPredictor(TransformerPredictor):
    """Whole-trajectory context: level ``k`` attends to levels ``k .. K`` (block-causal)."""

    markov = False

    def forward_trajectory(self, u_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Gaussian:
        k, b, n, d = u_levels.shape
        seq = u_levels.flip(0).permute(1, 0, 2, 3).reshape(b, k * n, d)  # levels K, K-1, ..., 1
        t = times[1:].flip(0).to(u_levels.dtype)
        s = times[:-1].flip(0).to(u_levels.dtype)
        c = torch.stack([self._context(t[i].expand(b), s[i].expand(b), cond) for i in range(k)], dim=1)
        c = c.repeat_interleave(n, dim=1)  # (B, K*N, W): each token gets its level's context
        level = torch.arange(k, device=u_levels.device).repeat_interleave(n)
        mask = level[:, None] >= level[None, :]  # see own level and every noisier one
        raw = self.net(seq, c, mask=mask, cond=cond).reshape(b, k, n, 2 * d).permute(1, 0, 2, 3).flip(0)
        t_all = times[1:].to(u_levels.dtype).repeat_interleave(b)
        s_all = times[:-1].to(u_levels.dtype).repeat_interleave(b)
        g = gaussian_head(raw.flatten(0, 1), u_levels.flatten(0, 1), t_all, s_all, self.config.parameterization, self.config.sigma)
        return g.map(lambda z: z.unflatten(0, (k, b)))

    def new_cache(self) -> KVCache:
        return KVCache()

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache: KVCache) -> Gaussian:
        raw = self.net(u_t, self._context(t, s, cond)[:, None], mask="full", cache=cache, cond=cond)
        return gaussian_head(raw, u_t, t, s, self.config.parameterization, self.config.sigma)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        """A single level with no noisier context (exactly the first sampling step)."""
        return self.step(u_t, t, s, cond, cache=None)
