"""What a component needs to know about the data to build itself."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Token geometry and conditioning of one trajectory state.

    ``num_tokens x token_dim`` is one state (``D = num_tokens * token_dim``);
    ``num_classes = 0`` means unconditional (labels, when given, use the
    extra null label ``num_classes`` for "no condition").
    """

    num_tokens: int
    token_dim: int
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.token_dim < 1 or self.num_classes < 0:
            raise ValueError(f"invalid model dims {self}")

    @property
    def dim(self) -> int:
        return self.num_tokens * self.token_dim
