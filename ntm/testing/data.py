"""The DataSource contract (:mod:`ntm.data.base`) as plain checks.

A source yields :class:`~ntm.data.base.Batch` es: ``x`` ``(B, *spec.shape)``
float32 (points ``(B, D)``; images ``(B, C, H, W)`` in ``[-1, 1]``) and
``label`` ``(B,)`` int64 in ``0 .. num_classes - 1`` (``None`` when
unconditional). The checks:

* ``spec``: a shape of positive ints, ``(D,)`` for points and ``(C, H, W)``
  for images, ``num_classes >= 0``, and every batch consistent with it;
* training streams are deterministic in ``(seed, start_step)``: two fresh
  streams agree, consecutive steps differ, another seed differs;
* resuming: ``start_step = s`` yields the ``s``-th batch of a fresh stream
  (``resume="exact"``, the rule of :mod:`ntm.data.streams`), or at least a
  deterministic stream (``resume="reseed"``, for streaming sources that
  reshuffle on resumption);
* ranks: ``world_size`` ranks of per-rank batch ``B`` concatenate to the
  single-process batch of ``world_size * B`` (``ranks="partition"``), or
  merely receive different batches (``ranks="differ"``, for sources that
  shard by file);
* ``eval_batches``: finite batches of the same per-example shape, at most
  ``batch_size`` each, the same examples in the same order on every pass and
  for every batch size, and ``max_examples`` truncating the pass;
* ``stats()`` is JSON-serialisable and ``to_display`` keeps the shape (latents: shows ``spec.image_shape``)
  (images land in ``[0, 1]``).
"""

from __future__ import annotations

import itertools
import json
from typing import Callable, Literal

import torch
from torch import Tensor

from ntm.data.base import Batch, DataSource, DataSpec
from ntm.testing._util import check, check_tensor, describe, fail


def _factory(config_or_source) -> tuple[Callable[[], DataSource], str]:
    if isinstance(config_or_source, DataSource):
        return (lambda: config_or_source), f"data source {type(config_or_source).__name__}"
    return config_or_source.build, f"data source {describe(config_or_source)}"


def _take(stream, n: int) -> list[Batch]:
    return list(itertools.islice(stream, n))


def _same(a: Batch, b: Batch) -> bool:
    if not torch.equal(a.x, b.x):
        return False
    if (a.label is None) != (b.label is None):
        return False
    return a.label is None or torch.equal(a.label, b.label)


def _cat(batches: list[Batch], spec: DataSpec) -> Batch:
    if not batches:
        return Batch(torch.empty(0, *spec.shape), torch.empty(0, dtype=torch.int64) if spec.num_classes else None)
    labels = [b.label for b in batches]
    label = None if any(lb is None for lb in labels) else torch.cat(labels)
    return Batch(torch.cat([b.x for b in batches]), label)


def check_spec(spec: object, subject: str = "data source") -> DataSpec:
    """``spec`` is a :class:`DataSpec` whose shape, kind and ``num_classes`` are consistent."""
    check(isinstance(spec, DataSpec), subject, f"spec is {type(spec).__name__}, expected ntm.data.DataSpec")
    assert isinstance(spec, DataSpec)
    shape = spec.shape
    check(isinstance(shape, tuple) and all(isinstance(s, int) and s >= 1 for s in shape), subject,
          f"spec.shape must be a tuple of positive ints, got {shape!r}")
    check(spec.kind in ("points", "images"), subject, f"spec.kind must be 'points' or 'images', got {spec.kind!r}")
    expected_rank = 1 if spec.kind == "points" else 3
    check(len(shape) == expected_rank, subject,
          f"spec.kind {spec.kind!r} needs a shape of {expected_rank} dims, got {shape}")
    check(isinstance(spec.num_classes, int) and spec.num_classes >= 0, subject,
          f"spec.num_classes must be an int >= 0, got {spec.num_classes!r}")
    return spec


def check_batch(batch: object, spec: DataSpec, subject: str, what: str, size: int | None = None) -> Batch:
    """One batch agrees with ``spec``: ``x`` ``(size, *shape)`` float32 finite (images in ``[-1, 1]``), labels, captions.

    ``size=None`` accepts any size from 1 up.
    """
    check(isinstance(batch, Batch), subject, f"{what} is {type(batch).__name__}, expected ntm.data.Batch")
    assert isinstance(batch, Batch)
    x = batch.x
    check(isinstance(x, Tensor) and x.ndim >= 1, subject, f"{what}.x is not a batched tensor")
    b = x.shape[0] if size is None else size
    check(b >= 1, subject, f"{what} is empty")
    check_tensor(x, subject, f"{what}.x", (b, *spec.shape), dtype=torch.float32)
    if spec.kind == "images" and spec.encoded_by is None and x.numel():  # latents are unit-scale, unbounded
        lo, hi = x.min().item(), x.max().item()
        check(lo >= -1 and hi <= 1, subject, f"{what}.x holds images outside [-1, 1] (range [{lo:g}, {hi:g}])")
    if spec.num_classes:
        check(batch.label is not None, subject, f"{what}.label is None but spec.num_classes = {spec.num_classes}")
        check_tensor(batch.label, subject, f"{what}.label", (b,), dtype=torch.int64)
        bad = ((batch.label < 0) | (batch.label >= spec.num_classes)).sum().item()
        check(bad == 0, subject, f"{what}.label has {bad} labels outside 0 .. {spec.num_classes - 1}")
    else:
        check(batch.label is None, subject, f"{what}.label must be None for an unconditional source (num_classes = 0)")
    if batch.caption is not None:
        check(isinstance(batch.caption, list) and len(batch.caption) == b and all(isinstance(c, str) for c in batch.caption),
              subject, f"{what}.caption must be None or a list of {b} strings")
    return batch


def check_data_source(
    config, *, batch_size: int = 8, seed: int = 0, steps: int = 3, start_step: int = 2, world_size: int = 2,
    resume: Literal["exact", "reseed"] = "exact", ranks: Literal["partition", "differ"] = "partition",
    eval_examples: int = 64,
) -> None:
    """The whole DataSource contract for ``config`` (a data-source config, built here, or a built source).

    ``batch_size`` must be divisible by ``world_size`` (each rank then reads
    ``batch_size // world_size``); ``steps`` consecutive training batches
    are compared; ``eval_examples`` caps the held-out passes.
    """
    build, subject = _factory(config)
    if batch_size % world_size:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by world_size ({world_size})")
    steps = max(steps, 2)
    source = build()
    spec = check_spec(getattr(source, "spec", None), subject)

    # -- training stream: shapes, determinism in (seed, start_step) ------------------------------
    fresh = _take(source.train_batches(batch_size, seed=seed), start_step + steps)
    check(len(fresh) == start_step + steps, subject,
          f"the training stream ended after {len(fresh)} batches; it must be endless")
    for i, batch in enumerate(fresh):
        check_batch(batch, spec, subject, f"training batch {i} (seed={seed})", batch_size)
        display = source.to_display(batch.x)
        shown = (batch.x.shape[0], *spec.image_shape) if spec.encoded_by is not None else tuple(batch.x.shape)
        check(isinstance(display, Tensor) and tuple(display.shape) == shown, subject,
              f"to_display gave shape {tuple(display.shape)}, expected {shown} (latents show as spec.image_shape)")
        if spec.kind == "images":
            check(display.min().item() >= 0 and display.max().item() <= 1, subject, "to_display of images left [0, 1]")
    again = _take(build().train_batches(batch_size, seed=seed), start_step + steps)
    for i, (a, b) in enumerate(zip(fresh, again)):
        check(_same(a, b), subject, f"two fresh streams with seed={seed} differ at step {i}; streams must be deterministic")
    check(not torch.equal(fresh[0].x, fresh[1].x), subject, "steps 0 and 1 of the training stream gave identical batches")
    other = next(iter(source.train_batches(batch_size, seed=seed + 1)))
    check(not torch.equal(other.x, fresh[0].x), subject, f"seeds {seed} and {seed + 1} gave identical first batches")

    # -- resumption --------------------------------------------------------------------------------
    resumed = _take(source.train_batches(batch_size, seed=seed, start_step=start_step), steps)
    for i, batch in enumerate(resumed):
        check_batch(batch, spec, subject, f"resumed batch {i} (start_step={start_step})", batch_size)
    if resume == "exact":
        for i, batch in enumerate(resumed):
            check(_same(batch, fresh[start_step + i]), subject,
                  f"start_step={start_step}: batch {i} is not batch {start_step + i} of a fresh stream")
    elif resume == "reseed":
        resumed_again = _take(build().train_batches(batch_size, seed=seed, start_step=start_step), steps)
        for i, (a, b) in enumerate(zip(resumed, resumed_again)):
            check(_same(a, b), subject, f"two streams resumed at start_step={start_step} differ at their batch {i}")
    else:
        raise ValueError(f"resume must be 'exact' or 'reseed', got {resume!r}")

    # -- ranks -------------------------------------------------------------------------------------
    per_rank = batch_size // world_size
    shards = [
        _take(source.train_batches(per_rank, seed=seed, start_step=start_step, rank=r, world_size=world_size), steps)
        for r in range(world_size)
    ]
    for r, rank_batches in enumerate(shards):
        for i, batch in enumerate(rank_batches):
            check_batch(batch, spec, subject, f"rank {r}/{world_size} batch {i}", per_rank)
    if ranks == "partition":
        reference = resumed
        if resume != "exact":
            reference = _take(source.train_batches(batch_size, seed=seed, start_step=start_step), steps)
        for i in range(steps):
            joined = _cat([shards[r][i] for r in range(world_size)], spec)
            check(_same(joined, reference[i]), subject,
                  f"step {start_step + i}: the {world_size} ranks' batches of {per_rank} do not concatenate to the "
                  f"single-process batch of {batch_size}")
    elif ranks == "differ":
        for i in range(steps):
            check(not torch.equal(shards[0][i].x, shards[1][i].x), subject,
                  f"ranks 0 and 1 got identical batches at step {i}")
    else:
        raise ValueError(f"ranks must be 'partition' or 'differ', got {ranks!r}")

    # -- held-out split ----------------------------------------------------------------------------
    def held_out(bs: int, limit: int) -> Batch:
        batches = list(source.eval_batches(bs, max_examples=limit))
        for i, batch in enumerate(batches):
            check_batch(batch, spec, subject, f"eval batch {i} (batch_size={bs}, max_examples={limit})")
            check(batch.x.shape[0] <= bs, subject, f"eval batch {i} has {batch.x.shape[0]} > batch_size={bs} examples")
        return _cat(batches, spec)

    full = held_out(batch_size, eval_examples)
    total = full.x.shape[0]
    check(total <= eval_examples, subject, f"eval_batches(max_examples={eval_examples}) yielded {total} examples")
    check(_same(held_out(batch_size, eval_examples), full), subject, "two passes of eval_batches differ")
    check(_same(held_out(batch_size + 3, eval_examples), full), subject,
          f"eval_batches with batch_size {batch_size} and {batch_size + 3} yield different examples or order")
    few = min(3, eval_examples)
    head = held_out(batch_size, few)
    check(head.x.shape[0] == min(few, total), subject,
          f"eval_batches(max_examples={few}) yielded {head.x.shape[0]} examples, expected {min(few, total)}")
    check(_same(head, Batch(full.x[:few], None if full.label is None else full.label[:few])), subject,
          f"eval_batches(max_examples={few}) is not the start of the longer pass")

    # -- stats -------------------------------------------------------------------------------------
    stats = source.stats()
    check(isinstance(stats, dict), subject, f"stats() returned {type(stats).__name__}, expected dict")
    try:
        json.dumps(stats)
    except (TypeError, ValueError) as e:
        fail(subject, f"stats() is not JSON-serialisable: {e}")


__all__ = ["check_batch", "check_data_source", "check_spec"]
