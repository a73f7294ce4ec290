"""The data-source interface every dataset implements.

A source yields :class:`Batch` es of normalised float32 tensors: 2-D points
as ``(B, D)``, images as ``(B, C, H, W)`` in ``[-1, 1]``. Training streams are
infinite and deterministic: the batch at step ``i`` depends only on
``(seed, i, rank, world_size)``, which is what makes an interrupted run
resume on the identical loss curve.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Iterator

from torch import Tensor

from ntm.registry import ComponentConfig, Registry


class DataError(ValueError):
    """Bad data or a bad data path; the message names the file or field."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    shape: tuple[int, ...]
    """One example: ``(D,)`` for points, ``(C, H, W)`` for images."""
    num_classes: int = 0
    """Number of class labels (0: unconditional)."""
    kind: str = "points"
    """``"points"`` or ``"images"`` (decides how samples are shown; latents of images are ``"images"``)."""
    encoded_by: str | None = None
    """For latents: the fingerprint of the autoencoder that encoded them (``to_display`` decodes); ``None``: the
    tensors are the data itself."""
    image_shape: tuple[int, ...] | None = None
    """For latents: the shape of the images they decode to."""


@dataclasses.dataclass
class Batch:
    x: Tensor
    """``(B, *spec.shape)`` float32, normalised."""
    label: Tensor | None = None
    """``(B,)`` int64 class labels, or ``None``."""
    caption: list[str] | None = None
    """Captions, for text-conditioned sources."""
    annotation: list[dict] | None = None
    """Structured, JSON-serialisable annotations, one per example, for sources that have them (``shapes``:
    category, objects, relation)."""

    def rows(self, index: slice) -> Batch:
        """The examples ``index`` of this batch (e.g. one micro-batch): views of its tensors, slices of its lists;
        absent fields stay ``None``."""
        def cut(value):
            return None if value is None else value[index]

        return dataclasses.replace(self, x=self.x[index], label=cut(self.label), caption=cut(self.caption),
                                   annotation=cut(self.annotation))


class DataSource(ABC):
    spec: DataSpec

    @abstractmethod
    def train_batches(
        self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Infinite stream of this rank's training batches, beginning at ``start_step``."""

    @abstractmethod
    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """Finite, deterministic pass over the held-out split."""

    def stats(self) -> dict:
        """Normalisation statistics to store with the run (JSON-serialisable)."""
        return {}

    def to_display(self, x: Tensor) -> Tensor:
        """Normalised tensors -> what a figure shows (images in [0, 1]; points unchanged)."""
        return x


DATA_SOURCES: Registry[DataSource] = Registry("data source", base=DataSource)

__all__ = ["DATA_SOURCES", "Batch", "ComponentConfig", "DataError", "DataSource", "DataSpec"]
