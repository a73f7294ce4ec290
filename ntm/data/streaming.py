"""``webdataset``: images (and optional labels / captions) streamed from tar shards.

Shards hold samples ``{"__key__", "png" | "jpg" | "jpeg" | "webp", "cls"?, "txt"?, "json"?}``
(:func:`ntm.data.shards.write_shards` and ``write_source_shards`` write them); a
``json`` entry (e.g. a ``shapes`` scene's annotation) comes back as
``Batch.annotation``. Images are decoded with
PIL, converted to ``channels``, resized (shorter side) and centre-cropped to
``image_size`` and normalised ``x / 255 * 2 - 1``.

Training stream, per epoch ``e``:

1. every rank shuffles the shard list with the same seed ``(seed, start_step, e)``;
2. rank ``r`` keeps shards ``r, r + world_size, ...`` (rank and world size are
   passed in explicitly; ``torch.distributed`` need not be initialised);
3. ``DataLoader(num_workers=...)`` workers split this rank's shards
   (``wds.split_by_worker``), decode, and shuffle samples through a buffer of
   ``shuffle_buffer`` seeded by ``(seed, start_step, e, rank, worker)``;
4. the samples are cut into batches of ``batch_size``; a batch may straddle
   two epochs.

So each rank sees each of its shards' samples exactly once per epoch, and the
stream is deterministic for fixed ``(seed, start_step, rank, world_size,
num_workers, batch_size)``.

**Resuming is not bit-exact: ``start_step > 0`` reseeds.** The stream
restarted at step ``k`` begins a fresh epoch sequence seeded by ``(seed, k)``
and replays nothing, so it does not continue the interrupted run's order (but
resuming twice at the same step gives the same batches, and every epoch still
covers the data once).

Corrupt data never ends the run: a sample that fails to read or decode is
skipped, counted in :attr:`WebDatasetSource.skipped` (also ``stats()["skipped"]``)
and reported as a :class:`CorruptSampleWarning` in the consuming process,
whichever worker hit it. (Instead of ``wds.warn_and_continue``, which sleeps
0.5 s per error inside the worker, a counting handler with the same
continue-on-error behaviour is used.)

The stream itself (:class:`ShardStream`: shard order, rank and worker
splitting, shuffling, rebatching, corrupt-sample accounting) is shared with
``latent-shards`` (:mod:`ntm.data.latent_shards`), which differs only in how a
sample becomes an example (:meth:`ShardStream._example_fn`) and how a batch's
``x`` is made (:meth:`ShardStream._to_x`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import warnings
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import pydantic
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ntm.data.base import DATA_SOURCES, Batch, ComponentConfig, DataError, DataSource, DataSpec
from ntm.data.folder import pil_to_uint8, uint8_to_unit
from ntm.data.streams import check_stream_args, derive_seed

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
MAX_LOGGED_ERRORS = 100


class CorruptSampleWarning(UserWarning):
    """A shard sample could not be read or decoded and was skipped."""


def is_local(url: str) -> bool:
    """Whether a shard URL is a local path (not ``scheme://...`` or ``pipe:...``)."""
    return "://" not in url and not url.startswith("pipe:")


def expand_urls(urls: str, who: str = "webdataset") -> list[str]:
    """Brace pattern / ``::``-separated list -> explicit shard URLs; local paths must exist."""
    expanded = list(wds.shardlists.expand_urls(urls))
    if not expanded:
        raise DataError(f"{who}: no shards in {urls!r}")
    for url in expanded:
        if is_local(url) and not Path(url).expanduser().is_file():
            raise DataError(f"{who}: shard not found: {url}")
    return expanded


# -- worker side ----------------------------------------------------------------


class _SkipLog:
    """Exception handler for the webdataset pipeline: count, remember, continue."""

    def __init__(self) -> None:
        self.count = 0
        self.messages: list[str] = []

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        if len(self.messages) < MAX_LOGGED_ERRORS:
            self.messages.append(repr(exn)[:500])
        return True  # skip the sample and go on

    def take(self) -> tuple[int, list[str]]:
        out = (self.count, self.messages)
        self.count, self.messages = 0, []
        return out


def _split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Node splitter with an explicit rank (``wds.split_by_node`` would ask ``torch.distributed``)."""
    yield from islice(src, rank, None, world_size)


def _to_example(sample: dict, image_size: int, channels: int, num_classes: int) -> dict:
    """Decoded wds sample -> ``{"x": (C, S, S) uint8, "label": int | None, "caption": str | None,
    "annotation": dict | None}``."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise DataError(f"sample {sample.get('__key__')!r} has no image ({'/'.join(IMAGE_KEYS)})")
    return {"x": pil_to_uint8(sample[key], image_size, channels), **conditions(sample, num_classes)}


def conditions(sample: dict, num_classes: int) -> dict:
    """A wds sample's ``{"label", "caption", "annotation"}`` (``cls``, ``txt``, ``json``), decoded or raw bytes;
    :class:`DataError` for a missing or out-of-range label when ``num_classes > 0``."""
    label = None
    if num_classes > 0:
        if "cls" not in sample:
            raise DataError(f"sample {sample.get('__key__')!r} has no 'cls' label")
        label = int(sample["cls"])
        if not 0 <= label < num_classes:
            raise DataError(f"sample {sample.get('__key__')!r}: label {label} outside 0..{num_classes - 1}")
    caption = sample.get("txt")
    if isinstance(caption, bytes):
        caption = caption.decode("utf-8")
    annotation = sample.get("json")
    if isinstance(annotation, bytes):
        annotation = json.loads(annotation)
    return {"label": label, "caption": None if caption is None else str(caption),
            "annotation": annotation if isinstance(annotation, dict) else None}


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir-style shuffle buffer of ``size`` samples (``size <= 1``: unchanged order)."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _chunk(examples: list[dict], skipped: int, errors: list[str]) -> dict:
    """Collate examples into one worker chunk (also carries the worker's new skip count)."""
    x = torch.stack([e["x"] for e in examples]) if examples else None
    labels = [e["label"] for e in examples]
    label = torch.tensor(labels, dtype=torch.long) if examples and labels[0] is not None else None
    return {"x": x, "label": label, "caption": [e["caption"] for e in examples],
            "annotation": [e["annotation"] for e in examples], "skipped": skipped, "errors": errors}


@dataclasses.dataclass
class _ShardPass(IterableDataset):
    """One pass over ``urls`` (already in epoch order), yielding chunks of up to ``chunk_size`` examples.

    ``to_example`` turns a sample into ``{"x", "label", "caption", "annotation"}`` (picklable: it travels to the
    DataLoader workers); ``decode`` is webdataset's decoder spec run first (``None``: raw bytes).
    """

    urls: list[str]
    to_example: Callable[[dict], dict]
    chunk_size: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    shuffle_seed: tuple[int | str, ...] = ()
    decode: str | None = "pil"

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        log = _SkipLog()
        pipeline = wds.WebDataset(
            self.urls,
            handler=log,
            shardshuffle=False,  # shard order is set per epoch by the caller
            nodesplitter=functools.partial(_split_by_rank, rank=self.rank, world_size=self.world_size),
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker may own no shard; the caller checks the epoch as a whole
        )
        if self.decode is not None:
            pipeline = pipeline.decode(self.decode, handler=log)
        pipeline = pipeline.map(self.to_example, handler=log)
        rng = random.Random(derive_seed(*self.shuffle_seed, "worker", worker))
        examples: list[dict] = []
        for example in _shuffled(iter(pipeline), self.shuffle_buffer, rng):
            examples.append(example)
            if len(examples) == self.chunk_size:
                yield _chunk(examples, *log.take())
                examples = []
        yield _chunk(examples, *log.take())  # the tail, possibly empty: it still reports skips


# -- main-process side --------------------------------------------------------


class _Rebatcher:
    """Accumulates chunks and cuts exact ``batch_size`` batches (``to_x``: stacked examples -> ``Batch.x``)."""

    def __init__(self, batch_size: int, to_x: Callable[[Tensor], Tensor]) -> None:
        self.batch_size = batch_size
        self.to_x = to_x
        self.examples = 0
        self._xs: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._captions: list[str | None] = []
        self._annotations: list[dict | None] = []

    def add(self, chunk: dict) -> None:
        if chunk["x"] is None:
            return
        self._xs.append(chunk["x"])
        if chunk["label"] is not None:
            self._labels.append(chunk["label"])
        self._captions.extend(chunk["caption"])
        self._annotations.extend(chunk["annotation"])
        self.examples += chunk["x"].shape[0]

    def pop(self, n: int) -> Batch:
        x = torch.cat(self._xs)
        label = torch.cat(self._labels) if self._labels else None
        self._xs = [x[n:]] if x.shape[0] > n else []
        self._labels = [label[n:]] if label is not None and label.shape[0] > n else []
        captions, self._captions = self._captions[:n], self._captions[n:]
        annotations, self._annotations = self._annotations[:n], self._annotations[n:]
        self.examples -= min(n, x.shape[0])
        return Batch(
            x=self.to_x(x[:n]),
            label=None if label is None else label[:n],
            caption=None if all(c is None for c in captions) else [c or "" for c in captions],
            annotation=None if all(a is None for a in annotations) else [a or {} for a in annotations],
        )

    def full_batches(self) -> Iterator[Batch]:
        while self.examples >= self.batch_size:
            yield self.pop(self.batch_size)


class WebDatasetConfig(ComponentConfig):
    urls: str
    """Training shards: a path, a brace pattern (``dir/shard-{000000..000009}.tar``) or ``a::b`` list."""
    image_size: int = pydantic.Field(32, ge=1)
    """Side of the square images fed to the model (shorter side resized, then centre-cropped)."""
    channels: Literal[1, 3] = 3
    """1: greyscale, 3: RGB."""
    num_classes: int = pydantic.Field(0, ge=0)
    """Number of classes in the samples' ``cls`` entries (0: unconditional, ``cls`` ignored)."""
    num_workers: int = pydantic.Field(0, ge=0)
    """DataLoader worker processes decoding shards (0: decode in the training process)."""
    eval_urls: str | None = None
    """Held-out shards (same forms as ``urls``); none: evaluation yields no batches."""
    shuffle_buffer: int = pydantic.Field(1000, ge=0)
    """Per-worker sample shuffle buffer (0 or 1: shard order only)."""

    def build(self) -> "WebDatasetSource":
        return WebDatasetSource(self)


class ShardStream(DataSource):
    """The shard stream shared by ``webdataset`` and ``latent-shards`` (see the module docstring).

    A subclass sets ``config`` (with ``urls``, ``num_workers``, ``shuffle_buffer``), ``urls``, ``eval_urls``
    and ``spec``, and says how a sample becomes an example (:meth:`_example_fn`, with :attr:`decode` run first)
    and how stacked examples become ``Batch.x`` (:meth:`_to_x`). ``who`` starts its messages.
    """

    who = "webdataset"
    decode: str | None = "pil"
    """webdataset's decoder spec run on each sample before :meth:`_example_fn` (``None``: raw bytes)."""

    config: Any
    urls: list[str]
    eval_urls: list[str] | None
    skipped: int = 0
    skip_messages: list[str]

    def _example_fn(self) -> Callable[[dict], dict]:  # pragma: no cover - interface
        """A picklable ``sample -> {"x", "label", "caption", "annotation"}`` run in the DataLoader workers."""
        raise NotImplementedError

    @staticmethod
    def _to_x(x: Tensor) -> Tensor:
        """Stacked examples ``(B, ...)`` -> ``Batch.x``."""
        return x

    def _pass(
        self, urls: list[str], chunk_size: int, *, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 0,
        shuffle_seed: tuple[int | str, ...] = (),
    ) -> Iterator[dict]:
        """One pass over ``urls`` through a DataLoader, accounting for skipped samples as chunks arrive."""
        dataset = _ShardPass(urls, self._example_fn(), chunk_size, rank=rank, world_size=world_size,
                             shuffle_buffer=shuffle_buffer, shuffle_seed=shuffle_seed, decode=self.decode)
        workers = min(self.config.num_workers, len(urls[rank::world_size]))  # a worker without shards would only idle
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        for chunk in loader:
            if chunk["skipped"]:
                self.skipped += chunk["skipped"]
                for message in chunk["errors"]:
                    if len(self.skip_messages) < MAX_LOGGED_ERRORS:
                        self.skip_messages.append(message)
                    warnings.warn(f"{self.who}: skipped a corrupt sample: {message}", CorruptSampleWarning,
                                  stacklevel=2)
            yield chunk

    def train_batches(
        self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Endless batches of this rank's shards; ``start_step > 0`` reseeds (see the module docstring)."""
        check_stream_args(batch_size, start_step, rank, world_size)
        if len(self.urls) < world_size:
            raise DataError(f"{self.who}: {len(self.urls)} shard(s) in {self.config.urls} for {world_size} ranks; "
                            "need at least one shard per rank")
        rebatch = _Rebatcher(batch_size, self._to_x)
        epoch = 0
        while True:
            order = list(self.urls)
            random.Random(derive_seed("wds/shards", seed, start_step, epoch)).shuffle(order)
            seen = 0
            for chunk in self._pass(order, batch_size, rank=rank, world_size=world_size,
                                    shuffle_buffer=self.config.shuffle_buffer,
                                    shuffle_seed=("wds/samples", seed, start_step, epoch, rank)):
                rebatch.add(chunk)
                seen += 0 if chunk["x"] is None else chunk["x"].shape[0]
                yield from rebatch.full_batches()
            if seen == 0:
                raise DataError(f"{self.who}: rank {rank} of {world_size} read no valid sample from "
                                f"{self.config.urls} in epoch {epoch} ({self.skipped} skipped as corrupt)")
            epoch += 1

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """One in-order pass over ``eval_urls`` (nothing when there are none); the last batch may be short."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.eval_urls is None:
            return
        remaining = float("inf") if max_examples is None else max(0, max_examples)
        for batch in self._in_order_batches(self.eval_urls, batch_size):
            if remaining <= 0:
                return
            batch = _truncate(batch, int(min(remaining, batch.x.shape[0])))
            remaining -= batch.x.shape[0]
            yield batch

    def _in_order_batches(self, urls: list[str], batch_size: int) -> Iterator[Batch]:
        """One unshuffled pass over ``urls`` in batches of ``batch_size`` (the last may be short)."""
        rebatch = _Rebatcher(batch_size, self._to_x)
        for chunk in self._pass(urls, batch_size):
            rebatch.add(chunk)
            yield from rebatch.full_batches()
        if rebatch.examples:
            yield rebatch.pop(rebatch.examples)


@DATA_SOURCES.register("webdataset", WebDatasetConfig)
class WebDatasetSource(ShardStream):
    """Batches of ``x (B, channels, image_size, image_size)`` float32 in ``[-1, 1]``.

    ``label (B,)`` int64 when ``num_classes > 0``; ``caption`` (``B`` strings,
    ``""`` where missing) in batches where some sample carries ``txt``, and
    ``annotation`` (``B`` dicts, ``{}`` where missing) where some carries ``json``.
    ``skipped`` counts samples (or shard read errors) skipped as corrupt so far,
    in this process and its DataLoader workers; ``skip_messages`` keeps the
    first ``MAX_LOGGED_ERRORS`` reasons.
    """

    def __init__(self, config: WebDatasetConfig) -> None:
        self.config = config
        self.spec = DataSpec(shape=(config.channels, config.image_size, config.image_size),
                             num_classes=config.num_classes, kind="images")
        self.urls = expand_urls(config.urls)
        self.eval_urls = None if config.eval_urls is None else expand_urls(config.eval_urls)
        self.skipped = 0
        self.skip_messages: list[str] = []

    def _example_fn(self) -> Callable[[dict], dict]:
        c = self.config
        return functools.partial(_to_example, image_size=c.image_size, channels=c.channels,
                                 num_classes=c.num_classes)

    @staticmethod
    def _to_x(x: Tensor) -> Tensor:
        return uint8_to_unit(x)

    def stats(self) -> dict:
        return {"normalisation": "x / 255 * 2 - 1", "pixel_max": 255, "range": [-1.0, 1.0],
                "skipped": self.skipped}

    def to_display(self, x: Tensor) -> Tensor:
        """``[-1, 1]`` -> ``[0, 1]``, same shape."""
        return ((x + 1) / 2).clamp(0, 1)


def _truncate(batch: Batch, n: int) -> Batch:
    if batch.x.shape[0] <= n:
        return batch
    return Batch(x=batch.x[:n], label=None if batch.label is None else batch.label[:n],
                 caption=None if batch.caption is None else batch.caption[:n],
                 annotation=None if batch.annotation is None else batch.annotation[:n])


__all__ = [
    "CorruptSampleWarning", "ShardStream", "WebDatasetConfig", "WebDatasetSource", "conditions", "expand_urls",
    "is_local",
]
