"""TarFlow-style transporter: causal autoregressive transformer blocks with an elementwise transform.

Each block scans the tokens in one order (alternating between blocks) and
maps token ``i`` by a monotone elementwise map ``u_i = tau(x_i; theta_i)``
whose parameters ``theta_i`` come from a causal transformer over the tokens
*before* ``i`` (a learned start token stands in front, carrying the level's
time and, optionally, the condition). The Jacobian is triangular:
``log|det| = sum log|tau'(x_i; theta_i)|``. An encoded condition with tokens
(a caption) is read by cross-attention in every layer: its keys are the same
for every token of the scan, so the causal mask, the start token and the KV
cache of the sequential inverse are as without it.

The block (:class:`CausalARBlock`) takes the transform as an
:class:`ElementwiseTransform`; TarFlow's is :class:`AffineTransform`,
``u_i = (x_i - mu_i) * exp(-a_i)`` with ``log|det| = -sum a``
(:mod:`ntm.transporters.spline_tarflow` plugs in a rational-quadratic spline).

Output projections are zero-initialised, so a new transporter is the
identity. The transform math runs in float32 (or wider) even under autocast,
and log-scales pass through ``c * tanh(a / c)`` when ``soft_clip = c``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import pydantic
import torch
from torch import Tensor, nn

from ntm.conditioning.condition import Cond
from ntm.nn import AdaLNBlock, ConditionEmbedding, FinalLayer, KVCache, TimeEmbedding
from ntm.nn.init import reset
from ntm.spec import ModelDims
from ntm.transporters.base import TRANSPORTERS, Transporter, TransporterConfig


class CausalFlowConfig(TransporterConfig):
    """Fields every causal AR transporter shares; subclasses choose the elementwise transform."""

    num_blocks: int = pydantic.Field(2, ge=1)
    """AR blocks; block j scans left-to-right when j is even, right-to-left when odd."""
    layers_per_block: int = pydantic.Field(2, ge=1)
    """Transformer layers inside each block."""
    deep_layers: int | None = pydantic.Field(None, ge=1)
    """Layers of the last block (the one nearest the prior, decoded first when sampling); None: layers_per_block.
    With a few shallow blocks this is the deep-shallow form of a single AR flow (one deep block carries most
    of the parameters, the shallow ones alternate the scan direction)."""
    width: int = pydantic.Field(64, ge=8)
    """Hidden width of every block."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads (must divide width)."""
    mlp_ratio: float = pydantic.Field(4.0, gt=0)
    """MLP hidden size as a multiple of width."""
    use_condition: bool = False
    """Condition the blocks on the condition (class label, or encoded caption) as well as on the time."""
    soft_clip: float | None = pydantic.Field(3.0, gt=0)
    """Bound log-scales smoothly to (-c, c) with c*tanh(a/c); None disables (unsafe: can diverge)."""
    inverse_method: Literal["sequential", "jacobi"] = "sequential"
    """Inverse: token-by-token with a KV cache, or parallel Jacobi fixed-point iterations."""
    jacobi_max_iters: int | None = pydantic.Field(None, ge=1)
    """Jacobi iteration cap per block (None: the number of tokens, which is exact)."""
    jacobi_tol: float = pydantic.Field(1e-6, ge=0)
    """Jacobi stops once no coordinate moves more than this."""

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> "CausalFlowConfig":
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")
        return self

    def elementwise(self) -> "ElementwiseTransform":  # pragma: no cover - interface
        """The transform every block applies to each value of a token."""
        raise NotImplementedError


class TarFlowConfig(CausalFlowConfig):
    """Affine AR blocks (TarFlow)."""

    def elementwise(self) -> "AffineTransform":
        return AffineTransform(self.soft_clip)

    def build(self, dims: ModelDims) -> "TarFlow":
        return TarFlow(self, dims)

    @classmethod
    def conformance_configs(cls) -> list["TarFlowConfig"]:
        # jacobi_tol=0: the Jacobi inverse runs its N exact sweeps, so all inverses must agree to round-off
        return [
            cls(width=32, num_heads=2, jacobi_tol=0.0),
            cls(width=32, num_heads=2, num_blocks=3, use_condition=True, jacobi_tol=0.0),
            cls(width=32, num_heads=2, soft_clip=None, layers_per_block=1, inverse_method="jacobi", jacobi_tol=0.0),
            cls(width=32, num_heads=2, num_blocks=3, layers_per_block=1, deep_layers=3, jacobi_tol=0.0),
        ]


Context = tuple[Tensor, "tuple[Tensor, Tensor] | None"]
"""What a block reads besides the tokens: the adaLN context ``(B, 1, width)`` and the condition tokens
``(tokens (B, M, width), mask (B, M))`` for cross-attention, or ``None``."""


def _affine_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class ElementwiseTransform(ABC):
    """A strictly increasing map of each value given ``num_params`` numbers of its own.

    ``params`` has shape ``(..., num_params, d)`` for values ``(..., d)``:
    parameter ``p`` of value ``j`` is ``params[..., p, j]``. The block feeds
    the zero-initialised read-out straight in, so all-zero ``params`` must
    give exactly the identity with a zero log-derivative. Stateless (no
    learned weights of its own).
    """

    num_params: int
    """Parameters per value."""

    @abstractmethod
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log du/dx)``, both shaped like ``x``."""

    @abstractmethod
    def inverse(self, u: Tensor, params: Tensor) -> Tensor:
        """``x`` with ``forward(x, params)[0] == u``."""

    def __call__(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(x, params)


class AffineTransform(ElementwiseTransform):
    """``u = (x - mu) * exp(-a)``, ``params = (mu, a)``; ``a`` passes through ``c * tanh(a / c)`` when ``soft_clip = c``.

    ``log du/dx = -a``.
    """

    num_params = 2

    def __init__(self, soft_clip: float | None) -> None:
        self.soft_clip = soft_clip

    def _clip(self, a: Tensor) -> Tensor:
        if self.soft_clip is None:
            return a
        return self.soft_clip * torch.tanh(a / self.soft_clip)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        mu, a = params.unbind(-2)
        a = self._clip(a)
        return (x - mu) * torch.exp(-a), -a

    def inverse(self, u: Tensor, params: Tensor) -> Tensor:
        mu, a = params.unbind(-2)
        return u * torch.exp(self._clip(a)) + mu


class ComposedTransform(ElementwiseTransform):
    """``second(first(x))``: ``params`` holds ``first``'s rows, then ``second``'s; log-derivatives add."""

    def __init__(self, first: ElementwiseTransform, second: ElementwiseTransform) -> None:
        self.first, self.second = first, second
        self.num_params = first.num_params + second.num_params

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params.split([self.first.num_params, self.second.num_params], dim=-2)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        p1, p2 = self._split(params)
        z, log_dz = self.first(x, p1)
        u, log_du = self.second(z, p2)
        return u, log_dz + log_du

    def inverse(self, u: Tensor, params: Tensor) -> Tensor:
        p1, p2 = self._split(params)
        return self.first.inverse(self.second.inverse(u, p2), p1)


class CausalARBlock(nn.Module):
    """One causal AR block over ``(B, N, d)`` tokens in a fixed scan order, mapping each value by ``transform``."""

    def __init__(
        self, config: CausalFlowConfig, dims: ModelDims, transform: ElementwiseTransform, reverse: bool,
        num_layers: int | None = None, cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.reverse = reverse
        self.transform = transform
        w = config.width
        self.in_proj = nn.Linear(dims.token_dim, w)
        self.start = nn.Parameter(torch.zeros(1, 1, w))
        self.pos = nn.Parameter(torch.randn(1, dims.num_tokens, w) * 0.02)
        self.layers = nn.ModuleList(
            AdaLNBlock(w, config.num_heads, w, config.mlp_ratio, layer_index=i, cross_attention=cross_attention)
            for i in range(num_layers or config.layers_per_block)
        )
        self.out = FinalLayer(w, w, transform.num_params * dims.token_dim)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset(self.in_proj)
        self.start.zero_()
        self.pos.copy_(torch.randn(self.pos.shape) * 0.02)
        reset(self.layers)
        reset(self.out)

    def _order(self, x: Tensor) -> Tensor:
        return x.flip(1) if self.reverse else x

    def _raw_params(self, h: Tensor, c: Context, cache: KVCache | None = None) -> Tensor:
        c, context = c
        for layer in self.layers:
            h = layer(h, c, mask="causal", cache=cache, context=context)
        return self.out(h, c)

    def _cast(self, raw: Tensor, like: Tensor) -> Tensor:
        """``(..., P d)`` read-out -> ``(..., P, d)`` parameters in float32 or wider."""
        return raw.to(_affine_dtype(like)).unflatten(-1, (self.transform.num_params, -1))

    def _inputs(self, xs: Tensor) -> Tensor:
        """Shifted inputs: the start token, then tokens ``0..N-2`` (scan order)."""
        b = xs.shape[0]
        prefix = self.in_proj(xs[:, :-1])
        return torch.cat([self.start.expand(b, -1, -1).to(prefix.dtype), prefix], dim=1) + self.pos

    def transform_params(self, xs: Tensor, c: Context) -> Tensor:
        """``(B, N, num_params, d)`` for every token of ``xs`` (scan order), in float32 or wider."""
        return self._cast(self._raw_params(self._inputs(xs), c), xs)

    def forward(self, x: Tensor, c: Context) -> tuple[Tensor, Tensor]:
        xs = self._order(x)
        params = self.transform_params(xs, c)
        u, log_du = self.transform(xs.to(params.dtype), params)
        return self._order(u.to(x.dtype)), log_du.flatten(1).sum(-1)

    def inverse_sequential(self, u: Tensor, c: Context) -> Tensor:
        """Decode token by token; the KV cache makes each step one token's work."""
        us = self._order(u)
        b, n, _ = us.shape
        cache = KVCache()
        h = self.start.expand(b, -1, -1).to(self.pos.dtype) + self.pos[:, :1]
        out = []
        for i in range(n):
            params = self._cast(self._raw_params(h, c, cache=cache), us)
            x_i = self.transform.inverse(us[:, i : i + 1].to(params.dtype), params)
            out.append(x_i.to(u.dtype))
            if i + 1 < n:
                h = self.in_proj(out[-1]) + self.pos[:, i + 1 : i + 2]
        return self._order(torch.cat(out, dim=1))

    def inverse_naive(self, u: Tensor, c: Context) -> Tensor:
        """Reference inverse that recomputes the whole prefix at every token (quadratic work)."""
        us = self._order(u)
        xs = torch.zeros_like(us)
        for i in range(us.shape[1]):
            params = self.transform_params(xs, c)
            xs = xs.clone()
            xs[:, i] = self.transform.inverse(us[:, i].to(params.dtype), params[:, i]).to(u.dtype)
        return self._order(xs)

    def inverse_jacobi(self, u: Tensor, c: Context, max_iters: int | None, tol: float) -> Tensor:
        """Parallel fixed-point iteration ``x <- transform^{-1}(u; theta(x))``; exact after N sweeps."""
        us = self._order(u)
        xs = us.clone()
        for _ in range(max_iters or us.shape[1]):
            params = self.transform_params(xs, c)
            new = self.transform.inverse(us.to(params.dtype), params).to(u.dtype)
            delta = (new - xs).abs().max()
            xs = new
            if delta <= tol:
                break
        return self._order(xs)


class CausalFlow(Transporter):
    """A stack of :class:`CausalARBlock` with alternating scan order; values are mapped by ``config.elementwise()``."""

    inverse_methods = ("sequential", "jacobi", "naive")

    def __init__(self, config: CausalFlowConfig, dims: ModelDims) -> None:
        super().__init__()
        self.config = config
        self.time_embed = TimeEmbedding(config.width)
        use = config.use_condition
        self.cond_embed = ConditionEmbedding(
            dims.num_classes if use else 0, config.width, dims.cond_dim if use else 0, dims.cond_len if use else 0
        )
        last = config.num_blocks - 1
        transform = config.elementwise()
        self.blocks = nn.ModuleList(
            CausalARBlock(
                config, dims, transform, reverse=bool(j % 2), num_layers=config.deep_layers if j == last else None,
                cross_attention=self.cond_embed.has_tokens,
            )
            for j in range(config.num_blocks)
        )

    def _context(self, t: Tensor, cond: Cond, like: Tensor) -> Context:
        """The adaLN context ``(B, 1, width)`` and the condition tokens for cross-attention (or ``None``)."""
        cond = cond if self.config.use_condition else None
        c = self.time_embed(t)
        c = c + self.cond_embed(cond, t.shape[0], like=c)
        return c[:, None, :], self.cond_embed.tokens(cond)

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        c = self._context(t, cond, x)
        logdet = torch.zeros(x.shape[0], dtype=_affine_dtype(x), device=x.device)
        for block in self.blocks:
            x, ld = block(x, c)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, u: Tensor, t: Tensor, cond: Cond = None, method: str | None = None) -> Tensor:
        """``method`` overrides the configured ``inverse_method`` ("sequential", "jacobi", "naive")."""
        c = self._context(t, cond, u)
        method = method or self.config.inverse_method
        for block in reversed(self.blocks):
            if method == "sequential":
                u = block.inverse_sequential(u, c)
            elif method == "jacobi":
                u = block.inverse_jacobi(u, c, self.config.jacobi_max_iters, self.config.jacobi_tol)
            elif method == "naive":
                u = block.inverse_naive(u, c)
            else:
                raise ValueError(f"unknown inverse method {method!r}; use sequential, jacobi or naive")
        return u


@TRANSPORTERS.register("tarflow", TarFlowConfig)
class TarFlow(CausalFlow):
    """Causal affine AR blocks (:class:`CausalARBlock` with :class:`AffineTransform`), alternating scan order."""
