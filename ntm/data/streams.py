"""Deterministic training streams: seed derivation, rank slicing, and the in-memory source base.

The rule every source follows: at step ``i`` there is one *global* batch of
``batch_size * world_size`` examples, a function of ``(seed, i)`` only, and
rank ``r`` takes the slice ``[r * batch_size, (r + 1) * batch_size)`` of it.
So ``N`` processes with per-rank batch ``B`` together see exactly what one
process with batch ``N * B`` sees, and the batch at any step is computable
directly (resuming at ``start_step`` replays nothing).
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch import Tensor

from ntm.data.base import Batch, DataSource, DataSpec


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a stable hash of ``parts`` (same on every machine and process).

    Distinct tuples give independent streams, e.g. ``derive_seed("train", seed, step)``
    never collides with ``derive_seed("eval", seed)``.
    """
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def check_stream_args(batch_size: int, start_step: int, rank: int, world_size: int) -> None:
    """Reject impossible stream arguments with a message naming the bad one."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class EpochPermutations:
    """Maps positions in an endless stream of epochs to example indices.

    Epoch ``e`` is ``randperm(num_examples)`` drawn from a generator seeded by
    ``(tag, seed, e)``; position ``p`` is example ``perm[p // n][p % n]``.
    Only the epochs currently needed are kept.
    """

    def __init__(self, num_examples: int, seed: int, tag: str = "epoch") -> None:
        if num_examples < 1:
            raise ValueError("an epoch needs at least one example")
        self.num_examples = num_examples
        self.seed = seed
        self.tag = tag
        self._cache: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        """``(num_examples,)`` int64 permutation of epoch ``epoch``."""
        if epoch not in self._cache:
            gen = seeded_generator(self.tag, self.seed, epoch)
            self._cache[epoch] = torch.randperm(self.num_examples, generator=gen)
        return self._cache[epoch]

    def indices(self, positions: Tensor) -> Tensor:
        """``(B,)`` int64 stream positions -> ``(B,)`` example indices."""
        n = self.num_examples
        epochs = positions // n
        out = torch.empty_like(positions)
        for epoch in torch.unique(epochs).tolist():
            mask = epochs == epoch
            out[mask] = self.permutation(int(epoch))[positions[mask] % n]
        lowest = int(epochs.min())
        for stale in [e for e in self._cache if e < lowest]:
            del self._cache[stale]
        return out


def rank_positions(step: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """``(batch_size,)`` stream positions of rank ``rank``'s slice of global batch ``step``."""
    start = (step * world_size + rank) * batch_size
    return torch.arange(start, start + batch_size, dtype=torch.long)


class InMemorySource(DataSource):
    """A finite dataset held as tensors, with a fixed train / held-out split.

    Subclasses set ``spec`` and call :meth:`_set_splits` with raw example
    tensors ``(N, *spec.shape)`` (any dtype) and optional ``(N,)`` labels;
    :meth:`normalise` turns a raw slice into float32 model input.

    Training stream: epochs of a permutation of the training split seeded by
    ``(seed, epoch)``; the global batch at step ``i`` is stream positions
    ``[i * G, (i + 1) * G)`` with ``G = batch_size * world_size`` (a batch may
    straddle two epochs), and rank ``r`` takes its contiguous ``batch_size``
    slice. Batch ``i`` is computed directly, so ``start_step`` costs nothing.
    """

    spec: DataSpec
    train_x: Tensor
    train_label: Tensor | None
    eval_x: Tensor
    eval_label: Tensor | None

    def _set_splits(
        self, train_x: Tensor, train_label: Tensor | None, eval_x: Tensor, eval_label: Tensor | None
    ) -> None:
        if train_x.shape[0] < 1:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        self.train_x, self.train_label = train_x, train_label
        self.eval_x, self.eval_label = eval_x, eval_label

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_eval(self) -> int:
        return int(self.eval_x.shape[0])

    def normalise(self, raw: Tensor) -> Tensor:
        """Raw examples ``(B, *shape)`` -> float32 model input ``(B, *shape)``."""
        return raw.to(torch.float32)

    def _batch(self, x: Tensor, label: Tensor | None, idx: Tensor) -> Batch:
        return Batch(x=self.normalise(x[idx]), label=None if label is None else label[idx].to(torch.long))

    def train_batches(
        self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Endless ``Batch(x (batch_size, *shape), label (batch_size,) | None)`` from ``start_step`` on."""
        check_stream_args(batch_size, start_step, rank, world_size)
        perms = EpochPermutations(self.num_train, seed, tag=f"{type(self).__name__}/train")
        step = start_step
        while True:
            idx = perms.indices(rank_positions(step, batch_size, rank, world_size))
            yield self._batch(self.train_x, self.train_label, idx)
            step += 1

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """The held-out split in its fixed order, ``batch_size`` at a time (the last batch may be short)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = self.num_eval if max_examples is None else min(self.num_eval, max(0, max_examples))
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(start + batch_size, total))
            yield self._batch(self.eval_x, self.eval_label, idx)


def split_indices(num_examples: int, eval_fraction: float, seed: int, tag: str) -> tuple[Tensor, Tensor]:
    """Seeded train / held-out split: ``(train_idx, eval_idx)``, each sorted ascending.

    The held-out set is the first ``round(eval_fraction * N)`` entries (at least
    one when ``eval_fraction > 0``, at most ``N - 1``) of a permutation drawn
    from ``(tag, seed)``.
    """
    if num_examples < 1:
        raise ValueError("cannot split an empty dataset")
    num_eval = round(eval_fraction * num_examples)
    if eval_fraction > 0:
        num_eval = max(num_eval, 1)
    num_eval = min(num_eval, num_examples - 1)
    perm = torch.randperm(num_examples, generator=seeded_generator(tag, "split", seed))
    return perm[num_eval:].sort().values, perm[:num_eval].sort().values


__all__ = [
    "EpochPermutations", "InMemorySource", "check_stream_args", "derive_seed", "rank_positions",
    "seeded_generator", "split_indices",
]
