"""``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 16 grey levels, 10 classes; no download).

Pixels ``0..16`` are normalised as ``x / 16 * 2 - 1`` to ``[-1, 1]``; each
example is ``(1, 8, 8)``. Held-out split: the first
``round(eval_fraction * 1797)`` indices of a permutation seeded by
``config.seed`` (270 images at the default 0.15); the rest train. Both splits
keep the dataset's own order. The training stream is
:class:`ntm.data.streams.InMemorySource`'s: seeded epoch permutations, the
batch at any step computed directly, ranks taking disjoint slices of the
global batch.
"""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from ntm.data.base import DATA_SOURCES, ComponentConfig, DataSpec
from ntm.data.streams import InMemorySource, split_indices

PIXEL_MAX = 16


class DigitsConfig(ComponentConfig):
    seed: int = 0
    """Seed of the train / held-out split (the training order is seeded by the run's seed)."""
    eval_fraction: float = pydantic.Field(0.15, gt=0.0, lt=1.0)
    """Fraction of the 1797 images held out for evaluation."""

    def build(self) -> "Digits":
        return Digits(self)


@DATA_SOURCES.register("digits", DigitsConfig)
class Digits(InMemorySource):
    """``x (B, 1, 8, 8)`` float32 in ``[-1, 1]``, ``label (B,)`` int64 in ``0..9``.

    ``train_indices`` / ``eval_indices`` are the two splits' indices into
    ``load_digits()``: ascending and disjoint.
    """

    def __init__(self, config: DigitsConfig) -> None:
        from sklearn.datasets import load_digits

        self.config = config
        self.spec = DataSpec(shape=(1, 8, 8), num_classes=10, kind="images")
        data = load_digits()
        images = torch.as_tensor(data.images, dtype=torch.uint8).reshape(-1, 1, 8, 8)  # values 0..16
        labels = torch.as_tensor(data.target, dtype=torch.long)
        self.train_indices, self.eval_indices = split_indices(
            images.shape[0], config.eval_fraction, config.seed, tag="digits"
        )
        self._set_splits(
            images[self.train_indices], labels[self.train_indices], images[self.eval_indices], labels[self.eval_indices]
        )

    def normalise(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32) / PIXEL_MAX * 2 - 1

    def stats(self) -> dict:
        return {"normalisation": "x / 16 * 2 - 1", "pixel_max": PIXEL_MAX, "range": [-1.0, 1.0]}

    def to_display(self, x: Tensor) -> Tensor:
        """``[-1, 1]`` -> ``[0, 1]``, same shape."""
        return ((x + 1) / 2).clamp(0, 1)


__all__ = ["Digits", "DigitsConfig"]
