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

Only the members the source declares are read (:data:`IMAGE_KEYS`, ``cls``, ``txt``, ``json``; ``latent-shards``:
``latent.npy``, ``cls``, ``txt``, ``json``), each by this module's own decoder: images by PIL restricted to
:data:`IMAGE_FORMATS`, ``cls`` as an integer, ``txt`` as UTF-8, ``json`` as JSON, ``latent.npy`` as a ``.npy`` array
with ``allow_pickle=False``. webdataset's decoders are never used (its default chain unpickles ``.pyd`` / ``.pkl`` /
``.pickle`` and ``torch.load``-s ``.pth``): every other member is dropped from the sample before anything is
decoded, and reported once per shard as an :class:`IgnoredMembersWarning` naming the shard and the extensions. So a
shard someone shares never runs code.

A ``pipe:`` URL (webdataset runs it with a shell) is refused with one line (:class:`DataError` naming the field)
unless the environment sets ``NTM_ALLOW_PIPE_URLS=1`` (:data:`PIPE_ENV`) for this process: an environment
variable because a config (a saved run's config.json, a preset) can never set it, so a run directory someone shares
cannot run a shell command on ``ntm eval --run``.

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
import io
import json
import os
import random
import warnings
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal
from urllib.parse import urlparse

import pydantic
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import rewrite_url

from ntm.data.base import DATA_SOURCES, Batch, ComponentConfig, DataError, DataSource, DataSpec
from ntm.data.folder import pil_to_uint8, uint8_to_unit
from ntm.data.streams import check_stream_args, derive_seed

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
"""Sample entries read as the image (the first present)."""
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""The only formats PIL may open an image entry as (whatever its extension says)."""
CONDITION_KEYS = ("cls", "txt", "json")
"""Sample entries read as the label, caption and annotation."""
META_KEYS = frozenset({"__key__", "__url__", "__local_path__"})
"""What webdataset itself puts in a sample (never a member's bytes)."""
MAX_LOGGED_ERRORS = 100
PIPE_ENV = "NTM_ALLOW_PIPE_URLS"
"""Set to ``1`` in the environment to let shard URLs be ``pipe:`` shell commands (a config cannot set it)."""
SHELL_SCHEMES = frozenset({"pipe"})
"""URL schemes webdataset opens by running a shell command (``gopen_pipe``, ``shell=True``)."""


class CorruptSampleWarning(UserWarning):
    """A shard sample could not be read or decoded and was skipped."""


class IgnoredMembersWarning(UserWarning):
    """A shard holds members its source does not read: they were dropped undecoded (reported once per shard)."""


def _scheme(url: str) -> str:
    """A URL's scheme as webdataset's ``gopen`` dispatches on it (``urlparse``, lower case; ``""``: a path)."""
    try:
        return urlparse(url).scheme.lower()
    except ValueError:
        return ""


def runs_a_shell(url: str) -> bool:
    """Whether webdataset would open ``url`` by running a shell command (also after ``GOPEN_REWRITE``)."""
    if _scheme(url) in SHELL_SCHEMES:
        return True
    if "GOPEN_REWRITE" in os.environ:
        try:
            rewritten = rewrite_url(url)
        except Exception:  # noqa: BLE001 - webdataset refuses rewriting under WDS_SECURE: nothing is opened then
            return False
        return _scheme(rewritten) in SHELL_SCHEMES
    return False


def shell_urls_allowed() -> bool:
    """``NTM_ALLOW_PIPE_URLS=1`` in this process's environment."""
    return os.environ.get(PIPE_ENV, "").strip() == "1"


def check_url(url: str, who: str = "webdataset", field: str = "data.urls") -> None:
    """:class:`DataError` (one line, naming ``field``) for a shell-running URL unless :func:`shell_urls_allowed`."""
    if runs_a_shell(url) and not shell_urls_allowed():
        raise DataError(f"{who}: {field} {url[:120]!r} is a pipe: URL, which runs a shell command; shell URLs are "
                        f"allowed only with {PIPE_ENV}=1 in the environment (never by a config)")


def is_local(url: str) -> bool:
    """Whether a shard URL is a local path (not ``scheme://...`` or a ``pipe:`` command)."""
    return "://" not in url and _scheme(url) not in SHELL_SCHEMES


def expand_urls(urls: str, who: str = "webdataset", field: str = "data.urls") -> list[str]:
    """Brace pattern / ``::``-separated list -> explicit shard URLs; local paths must exist, and a ``pipe:`` URL
    needs :data:`PIPE_ENV` (:func:`check_url`; ``field`` names the config field in the message)."""
    expanded = list(wds.shardlists.expand_urls(urls))
    if not expanded:
        raise DataError(f"{who}: no shards in {urls!r}")
    for url in expanded:
        check_url(url, who, field)
        if is_local(url) and not Path(url).expanduser().is_file():
            raise DataError(f"{who}: shard not found: {url}")
    return expanded


# -- worker side ----------------------------------------------------------------


class _SkipLog:
    """Exception handler for the webdataset pipeline: count, remember, continue."""

    def __init__(self) -> None:
        self.count = 0
        self.messages: list[str] = []
        self.ignored: list[tuple[str, list[str]]] = []
        """``(shard, extensions)`` for each shard read that held undeclared members (see :class:`_Declared`)."""

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        if len(self.messages) < MAX_LOGGED_ERRORS:
            self.messages.append(repr(exn)[:500])
        return True  # skip the sample and go on

    def take(self) -> tuple[int, list[str], list[tuple[str, list[str]]]]:
        out = (self.count, self.messages, self.ignored)
        self.count, self.messages, self.ignored = 0, [], []
        return out


class _Declared:
    """The first stage after the tar reader, before anything is decoded: each raw sample keeps only the declared
    members (and webdataset's ``__key__`` / ``__url__``); the extensions dropped are gathered per shard and handed
    to ``log.ignored`` when the shard's samples end (samples arrive shard by shard, in order)."""

    def __init__(self, members: frozenset[str], log: _SkipLog) -> None:
        self.members = members
        self.log = log
        self._url: str | None = None
        self._dropped: set[str] = set()

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        for sample in samples:
            url = str(sample.get("__url__", "?"))
            if url != self._url:
                self._flush()
                self._url = url
            kept = {k: v for k, v in sample.items() if k in self.members or k in META_KEYS}
            if len(kept) != len(sample):
                self._dropped.update(str(k) for k in sample if k not in kept)
            yield kept
        self._flush()

    def _flush(self) -> None:
        if self._dropped:
            self.log.ignored.append((str(self._url), sorted(self._dropped)))
        self._dropped = set()


def _ignored_message(who: str, url: str, extensions: Iterable[str], members: Iterable[str]) -> str:
    return (f"{who}: {url}: ignored undeclared member(s) {', '.join('.' + e for e in extensions)}, not decoded "
            f"(this source reads only {', '.join('.' + m for m in sorted(members))})")


def _split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Node splitter with an explicit rank (``wds.split_by_node`` would ask ``torch.distributed``)."""
    yield from islice(src, rank, None, world_size)


def decode_image(data: bytes) -> Image.Image:
    """An image entry's bytes -> a loaded PIL image; only :data:`IMAGE_FORMATS` are tried (so no format whose
    plugin runs an external program, such as EPS through Ghostscript, is ever opened)."""
    image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    image.load()
    return image


def _to_example(sample: dict, image_size: int, channels: int, num_classes: int) -> dict:
    """Raw wds sample (bytes) -> ``{"x": (C, S, S) uint8, "label": int | None, "caption": str | None,
    "annotation": dict | None}``."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise DataError(f"sample {sample.get('__key__')!r} has no image ({'/'.join(IMAGE_KEYS)})")
    with decode_image(sample[key]) as image:
        x = pil_to_uint8(image, image_size, channels)
    return {"x": x, **conditions(sample, num_classes)}


def conditions(sample: dict, num_classes: int) -> dict:
    """A wds sample's ``{"label", "caption", "annotation"}`` from its raw ``cls`` (an integer in ASCII), ``txt``
    (UTF-8) and ``json`` bytes; :class:`DataError` for a missing or out-of-range label when ``num_classes > 0``."""
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


def _chunk(examples: list[dict], skipped: int, errors: list[str], ignored: list[tuple[str, list[str]]]) -> dict:
    """Collate examples into one worker chunk (also carries the worker's new skip count and the shards it finished
    that held undeclared members)."""
    x = torch.stack([e["x"] for e in examples]) if examples else None
    labels = [e["label"] for e in examples]
    label = torch.tensor(labels, dtype=torch.long) if examples and labels[0] is not None else None
    return {"x": x, "label": label, "caption": [e["caption"] for e in examples],
            "annotation": [e["annotation"] for e in examples], "skipped": skipped, "errors": errors,
            "ignored": ignored}


@dataclasses.dataclass
class _ShardPass(IterableDataset):
    """One pass over ``urls`` (already in epoch order), yielding chunks of up to ``chunk_size`` examples.

    ``to_example`` turns a raw sample (bytes) into ``{"x", "label", "caption", "annotation"}`` (picklable: it
    travels to the DataLoader workers); before it, every member not in ``members`` is dropped (:class:`_Declared`).
    No webdataset decoder runs.
    """

    urls: list[str]
    to_example: Callable[[dict], dict]
    chunk_size: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    shuffle_seed: tuple[int | str, ...] = ()
    members: frozenset[str] = frozenset()

    def __iter__(self) -> Iterator[dict]:
        for url in self.urls:  # checked when the source was built; again here, right before opening
            check_url(url)
        info = get_worker_info()
        worker = 0 if info is None else info.id
        log = _SkipLog()
        raw = wds.WebDataset(
            self.urls,
            handler=log,
            shardshuffle=False,  # shard order is set per epoch by the caller
            nodesplitter=functools.partial(_split_by_rank, rank=self.rank, world_size=self.world_size),
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker may own no shard; the caller checks the epoch as a whole
        )
        rng = random.Random(derive_seed(*self.shuffle_seed, "worker", worker))
        examples: list[dict] = []
        for example in _shuffled(self._examples(_Declared(self.members, log)(iter(raw)), log), self.shuffle_buffer,
                                 rng):
            examples.append(example)
            if len(examples) == self.chunk_size:
                yield _chunk(examples, *log.take())
                examples = []
        yield _chunk(examples, *log.take())  # the tail, possibly empty: it still reports skips

    def _examples(self, samples: Iterator[dict], log: _SkipLog) -> Iterator[dict]:
        """``to_example`` over the (declared-only) samples; one that raises is counted by ``log`` and skipped."""
        for sample in samples:
            try:
                example = self.to_example(sample)
            except Exception as exn:  # noqa: BLE001 - corrupt data never ends the run (module docstring)
                log(exn)
                continue
            yield example


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
    and ``spec``, declares the sample entries it reads (:attr:`members`), and says how a raw sample becomes an
    example (:meth:`_example_fn`) and how stacked examples become ``Batch.x`` (:meth:`_to_x`). ``who`` starts its
    messages.
    """

    who = "webdataset"
    members: frozenset[str] = frozenset((*IMAGE_KEYS, *CONDITION_KEYS))
    """The sample entries (tar member extensions) :meth:`_example_fn` reads; every other member is dropped before
    anything is decoded and reported once per shard (:class:`IgnoredMembersWarning`)."""

    config: Any
    urls: list[str]
    eval_urls: list[str] | None
    skipped: int = 0
    skip_messages: list[str]
    ignored_members: dict[str, list[str]]
    """Shard -> the undeclared extensions it held (each shard warned about once)."""

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
                             shuffle_buffer=shuffle_buffer, shuffle_seed=shuffle_seed, members=self.members)
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
            for url, extensions in chunk.get("ignored") or ():
                self._report_ignored(str(url), [str(e) for e in extensions])
            yield chunk

    def _report_ignored(self, url: str, extensions: list[str]) -> None:
        """One :class:`IgnoredMembersWarning` per shard (later passes over it add only unseen extensions)."""
        if not hasattr(self, "ignored_members"):
            self.ignored_members = {}
        seen = self.ignored_members.get(url)
        if seen is None:
            self.ignored_members[url] = sorted(extensions)
            warnings.warn(_ignored_message(self.who, url, extensions, self.members), IgnoredMembersWarning,
                          stacklevel=3)
        else:
            self.ignored_members[url] = sorted({*seen, *extensions})

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
        self.eval_urls = None if config.eval_urls is None else expand_urls(config.eval_urls, field="data.eval_urls")
        self.skipped = 0
        self.skip_messages: list[str] = []
        self.ignored_members: dict[str, list[str]] = {}

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
    "CONDITION_KEYS", "CorruptSampleWarning", "IMAGE_FORMATS", "IMAGE_KEYS", "IgnoredMembersWarning", "PIPE_ENV",
    "ShardStream", "WebDatasetConfig", "WebDatasetSource", "check_url", "conditions", "decode_image", "expand_urls",
    "is_local", "runs_a_shell", "shell_urls_allowed",
]
