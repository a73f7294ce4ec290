"""What a component needs to know about the data to build itself."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Token geometry and conditioning of one trajectory state.

    ``num_tokens x token_dim`` is one state (``D = num_tokens * token_dim``);
    ``num_classes = 0`` means no class labels (labels, when given, use the
    extra null label ``num_classes`` for "no condition"). ``cond_dim > 0``
    means an encoded condition (:class:`~ntm.conditioning.condition.Condition`,
    e.g. an encoded caption) whose ``pooled`` vector has ``cond_dim`` features;
    ``cond_len > 0`` says it also carries up to ``cond_len`` tokens of
    ``cond_dim`` features, read by cross-attention. With both 0 (class labels,
    or unconditional) components build exactly the modules they always did.
    """

    num_tokens: int
    token_dim: int
    num_classes: int = 0
    cond_dim: int = 0
    cond_len: int = 0
    grid: tuple[int, int] | None = dataclasses.field(default=None, compare=False)
    """``(rows, cols)`` of the row-major token grid (rows x cols = ``num_tokens``), what 2D rotary positions
    read; ``None``: unknown (components that need it take a square grid or a config's own). Not compared: dims
    saved before it existed still match."""

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.token_dim < 1 or self.num_classes < 0 or self.cond_dim < 0 or self.cond_len < 0:
            raise ValueError(f"invalid model dims {self}")
        if self.grid is not None:  # from JSON (an export's dims) it arrives as a list
            object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
            if self.grid[0] * self.grid[1] != self.num_tokens:
                raise ValueError(f"invalid model dims {self}: a grid of {self.grid[0]} x {self.grid[1]} is not "
                                 f"{self.num_tokens} tokens")
        if self.cond_len and not self.cond_dim:
            raise ValueError(f"invalid model dims {self}: condition tokens (cond_len > 0) need cond_dim > 0")

    @property
    def dim(self) -> int:
        return self.num_tokens * self.token_dim

    @property
    def conditional(self) -> bool:
        """Whether the model reads any condition (class labels or an encoded one)."""
        return self.num_classes > 0 or self.cond_dim > 0
