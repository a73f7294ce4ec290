"""A data source seen through an autoencoder: batches of unit-scale latents, shown as decoded images.

:class:`LatentSource` wraps an image source and encodes its batches on the fly
(no gradient, posterior mean), or wraps a source that already yields latents
(cached latent shards, ``spec.encoded_by`` set) after checking they were
written by this very autoencoder. Conditions (labels, captions, annotations)
pass through unchanged. ``to_display`` decodes, so every figure, metric and
sample file downstream sees pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
from torch import Tensor

from ntm.autoencoders.base import Autoencoder, AutoencoderError
from ntm.data.base import Batch, DataSource

STATS_EXAMPLES = 2048
"""Training examples the latent statistics are fitted on when the autoencoder brings none."""


class LatentSource(DataSource):
    """``inner``'s batches with ``x`` replaced by ``autoencoder.encode(x)``; see the module docstring."""

    def __init__(self, inner: DataSource, autoencoder: Autoencoder, *, encode_batch: int = 256) -> None:
        self.inner = inner
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.encode_batch = encode_batch
        encoded_by = getattr(inner.spec, "encoded_by", None)
        if encoded_by is None:
            if inner.spec.kind != "images":
                raise AutoencoderError(f"an autoencoder needs images; the data source yields {inner.spec.kind} "
                                       f"of shape {inner.spec.shape}")
            shape = autoencoder.latent_shape(inner.spec.shape)
            if not bool(autoencoder.stats_fitted):
                batches = inner.train_batches(min(STATS_EXAMPLES, 256), seed=0)
                autoencoder.fit_latent_stats((b.x for b in batches), max_examples=STATS_EXAMPLES)
            self.image_shape = tuple(inner.spec.shape)
        else:
            if encoded_by != autoencoder.fingerprint():
                raise AutoencoderError(
                    f"the latent shards were written by autoencoder {encoded_by}, but the run's autoencoder is "
                    f"{autoencoder.fingerprint()}; encode the data again with this autoencoder "
                    "(ntm shards write --encode) or point the run at the one that wrote them")
            shape = tuple(inner.spec.shape)
            self.image_shape = tuple(getattr(inner.spec, "image_shape", None) or ())
        self.fingerprint = autoencoder.fingerprint()
        self.spec = dataclasses.replace(inner.spec, shape=tuple(shape), encoded_by=self.fingerprint,
                                        image_shape=self.image_shape or None)
        self.cached = encoded_by is not None

    @property
    def pixel_source(self) -> DataSource | None:
        """The image source underneath (``None`` for cached latent shards)."""
        return None if self.cached else self.inner

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        device = self.autoencoder.latent_shift.device
        parts = [self.autoencoder.encode(x[i:i + self.encode_batch].to(device)).float().cpu()
                 for i in range(0, x.shape[0], self.encode_batch)]
        return torch.cat(parts) if parts else x.new_zeros((0, *self.spec.shape))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latents -> images in ``[-1, 1]`` (CPU float32)."""
        device = self.autoencoder.latent_shift.device
        parts = [self.autoencoder.decode(z[i:i + self.encode_batch].to(device)).float().cpu()
                 for i in range(0, z.shape[0], self.encode_batch)]
        return torch.cat(parts).clamp(-1, 1)

    def _encoded(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            yield batch if self.cached else dataclasses.replace(batch, x=self.encode(batch.x))

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        return self._encoded(self.inner.train_batches(batch_size, seed=seed, start_step=start_step, rank=rank,
                                                      world_size=world_size))

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        return self._encoded(self.inner.eval_batches(batch_size, max_examples=max_examples))

    def stats(self) -> dict:
        return {**self.inner.stats(), "autoencoder": self.fingerprint, "latent_shape": list(self.spec.shape),
                "latent_shift": self.autoencoder.latent_shift.tolist(),
                "latent_scale": self.autoencoder.latent_scale.tolist()}

    def to_display(self, x: Tensor) -> Tensor:
        """Latents ``(B, c, h, w)`` -> decoded images ``(B, C, H, W)`` in ``[0, 1]``."""
        return ((self.decode(x.float()) + 1) / 2).clamp(0, 1)


__all__ = ["LatentSource"]
