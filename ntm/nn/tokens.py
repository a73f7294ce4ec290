"""Patchify / unpatchify: the one place images become tokens and back.

Images ``(B, C, H, W)`` become ``(B, N, d)`` with ``N = (H/p)(W/p)`` tokens of
``d = C p^2`` channels (row-major over patches). Points ``(B, D)`` become
``(B, D, 1)``: one token per coordinate.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """How one example's tensor of ``shape`` maps to ``num_tokens x token_dim``."""

    shape: tuple[int, ...]
    patch_size: int = 1

    def __post_init__(self) -> None:
        if len(self.shape) == 3:
            c, h, w = self.shape
            if h % self.patch_size or w % self.patch_size:
                raise ValueError(f"patch_size {self.patch_size} does not divide image size {h}x{w}")
        elif len(self.shape) != 1:
            raise ValueError(f"expected a (D,) point or (C, H, W) image shape, got {self.shape}")

    @property
    def num_tokens(self) -> int:
        if len(self.shape) == 1:
            return self.shape[0]
        _, h, w = self.shape
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the row-major token grid: ``(H/p, W/p)`` for images, one row of ``D`` for points
        (what 2D rotary positions read: the transformer predictors' ``positions: rope-2d``)."""
        if len(self.shape) == 1:
            return 1, self.shape[0]
        _, h, w = self.shape
        return h // self.patch_size, w // self.patch_size

    @property
    def token_dim(self) -> int:
        if len(self.shape) == 1:
            return 1
        return self.shape[0] * self.patch_size**2

    @property
    def dim(self) -> int:
        return self.num_tokens * self.token_dim

    def to_tokens(self, x: Tensor) -> Tensor:
        if len(self.shape) == 1:
            return x.unsqueeze(-1)
        return patchify(x, self.patch_size)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        if len(self.shape) == 1:
            return tokens.squeeze(-1)
        _, h, w = self.shape
        return unpatchify(tokens, self.patch_size, h, w)


def patchify(x: Tensor, p: int) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, p: int, h: int, w: int) -> Tensor:
    b, n, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, h // p, w // p, c, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


__all__ = ["TokenLayout", "patchify", "unpatchify"]
