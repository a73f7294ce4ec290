"""Shared layers: MLP, adaLN modulation, and the transformer block built from them."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ntm.nn.attention import Attention, CrossAttention, KVCache, MaskKind
from ntm.nn.init import reset_children


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning.

    ``c`` is ``(B, 1, cond_dim)`` (one vector per example) or ``(B, L, cond_dim)``
    (one per token, e.g. a per-level time in a trajectory). The modulation
    projection is zero-initialised, so a fresh block is the identity map.

    ``cross_attention=True`` adds a sublayer between self-attention and the MLP
    in which the tokens attend to condition tokens (``context = (tokens (B, M, dim),
    mask (B, M))``, e.g. an encoded caption); its output projection is
    zero-initialised too. Without it (the default) the block has exactly the
    parameters it always had; ``context=None`` skips the sublayer.

    ``modulation=False`` makes it a plain pre-norm block (LayerNorms with their own
    affine weights, no ``ada`` projection, ``c`` ignored): the conditioning then
    travels in the token stream (the predictors' ``time: additive``).
    ``num_kv_heads`` is grouped-query self-attention and ``rope`` (in :meth:`forward`)
    rotary positions (:class:`~ntm.nn.attention.Attention`); the defaults build and
    run exactly what the block always was.
    """

    fsdp_unit: ClassVar[bool] = True
    """FSDP shards each block as a unit of its own (see ``Transporter.shard_units``)."""

    def __init__(
        self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0, layer_index: int = 0,
        cross_attention: bool = False, num_kv_heads: int | None = None, modulation: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not modulation, eps=1e-6)
        self.attn = Attention(dim, num_heads, layer_index=layer_index, num_kv_heads=num_kv_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not modulation, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        if modulation:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)
        else:
            self.ada = None
        if cross_attention:  # created last: blocks without it draw their initial weights exactly as before
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CrossAttention(dim, num_heads)
        else:
            self.cross = None

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset_children(self)
        if self.ada is not None:
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

    def forward(
        self, x: Tensor, c: Tensor, mask: MaskKind | Tensor = "full", cache: KVCache | None = None,
        context: tuple[Tensor, Tensor] | None = None, rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x), mask=mask, cache=cache, rope=rope)
            x = self._cross(x, context)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask=mask, cache=cache, rope=rope)
        x = self._cross(x, context)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x

    def _cross(self, x: Tensor, context: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.cross is not None and context is not None:
            tokens, token_mask = context
            x = x + self.cross(self.norm_cross(x), tokens, token_mask)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated norm then a zero-initialised linear read-out (``modulation=False``: a LayerNorm with
    its own affine weights instead, ``c`` ignored)."""

    def __init__(self, dim: int, cond_dim: int, out: int, modulation: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=not modulation, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim)) if modulation else None
        self.linear = nn.Linear(dim, out)
        self._zero()

    def _zero(self) -> None:
        for layer in (self.linear,) if self.ada is None else (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`)."""
        reset_children(self)
        self._zero()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if self.ada is None:
            return self.linear(self.norm(x))
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
