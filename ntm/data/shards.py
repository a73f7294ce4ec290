"""WebDataset support: write tar shards from an image folder or a registered source; ``webdataset`` reads them.

Writing (the command line is ``ntm shards write``, in :mod:`experiments.cli`)::

    ntm shards write --folder data/cats_dogs --out 'shards/train-%06d.tar' --maxcount 1000
    ntm shards write --source shapes --count 20000 --out 'shards/shapes-%06d.tar'

From a folder (:func:`write_shards`), each sample is ``{"__key__", "png",
"cls"?, "txt"?}``: the image as PNG bytes (PNG files are copied byte for
byte, other formats re-encoded), the class index when the folder has class
subfolders (the layout of :func:`ntm.data.folder.scan_image_folder`), and the
caption from a ``.txt`` file with the same stem next to the image, when there
is one.

From a registered image source (:func:`write_source_shards`), each sample is
``{"__key__", "png", "cls"?, "txt"?, "json"?}``: the source's image
(``to_display`` rounded to 8 bits, so a uint8 source such as ``shapes`` is
stored losslessly), its label, its caption and its annotation (``Batch.annotation``)
as JSON, taken in order from the source's training stream or held-out split.

Every shard is written by :class:`ShardSink`: to a temporary name beside it
(``<name>.tmp-<pid>-<token>``, :func:`ntm.atomic.temp_path`) and renamed onto
its name once closed and fsynced, so a write that fails (or is killed) never
leaves a valid-looking partial tar under a shard's name; the failing shard's
temporary file is removed (shards completed before it stay). The output
pattern must be a local path.

Reading is :class:`ntm.data.streaming.WebDatasetSource` (registered as
``webdataset``), re-exported here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import re
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, Literal

import torch
import webdataset as wds
from PIL import Image
from torch import Tensor

from ntm.atomic import fsync_dir, temp_path
from ntm.data.base import DATA_SOURCES, ComponentConfig, DataError
from ntm.data.folder import scan_image_folder
from ntm.data.streaming import CorruptSampleWarning, WebDatasetConfig, WebDatasetSource, is_local


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    shards: tuple[str, ...]
    """Paths of the shards written, in order."""
    num_samples: int
    """Samples written."""
    class_names: tuple[str, ...]
    """Class index -> subfolder name (empty for a flat folder)."""
    num_captions: int = 0
    """Samples that carry a ``txt`` caption."""
    num_annotations: int = 0
    """Samples that carry a ``json`` annotation."""


def _png_bytes(file: Path) -> bytes:
    """The image as PNG bytes (PNG files verbatim after a validity check)."""
    try:
        with Image.open(file) as image:
            if image.format == "PNG":
                image.verify()
                return file.read_bytes()
            image.load()
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"write_shards: cannot read image {file}: {exc}") from exc


def _key(index: int, relative: Path) -> str:
    """Unique tar key: no dots or slashes (webdataset splits keys at the first dot)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(relative.with_suffix("")))
    return f"{index:08d}_{stem}"


def _check_output(out_pattern: str, maxcount: int) -> None:
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    if "%" not in out_pattern:
        raise ValueError(f"out_pattern needs a shard-number placeholder such as %06d, got {out_pattern!r}")
    if not is_local(out_pattern) or out_pattern.startswith("file:"):
        raise ValueError(f"out_pattern must be a local path (each shard is written to a temporary file and renamed), "
                         f"got {out_pattern!r}")


class ShardSink:
    """Tar shards of at most ``maxcount`` samples named ``pattern % 0, 1, ...``, each appearing under its name only
    complete: written to a temporary file beside it (:func:`ntm.atomic.temp_path`), then closed, fsynced and renamed.

    A context manager (the way ``wds.ShardWriter`` is used): leaving the block normally closes the last shard;
    leaving it by an exception (or a failing close) removes the open shard's temporary file and renames nothing,
    so no partial tar is left under a shard's name (shards closed earlier stay). A shard is opened by its first
    sample, so writing nothing creates no file. ``post(name)`` runs after each shard is renamed; :attr:`count` is
    then that shard's sample count.
    """

    def __init__(self, pattern: str, maxcount: int, post: Callable[[str], object] | None = None) -> None:
        self.pattern = pattern
        self.maxcount = maxcount
        self.post = post
        self.shard = 0
        self.count = 0
        self.total = 0
        self._name: Path | None = None
        self._tmp: Path | None = None
        self._file: IO[bytes] | None = None
        self._tar: wds.TarWriter | None = None

    def write(self, sample: dict) -> None:
        if self._tar is None or self.count >= self.maxcount:
            self._next()
        assert self._tar is not None
        self._tar.write(sample)
        self.count += 1
        self.total += 1

    def _next(self) -> None:
        self._finish()
        self._name = Path(self.pattern % self.shard)
        self.shard += 1
        self._tmp = temp_path(self._name)
        self._file = open(self._tmp, "wb")
        compress = next((c for c in ("gz", "bz2", "xz") if self._name.name.endswith(c)), False)
        self._tar = wds.TarWriter(self._file, compress=compress)
        self.count = 0

    def _finish(self) -> None:
        """Close the open shard and rename it onto its name."""
        if self._tar is None:
            return
        assert self._file is not None and self._tmp is not None and self._name is not None
        self._tar.close()  # the tar's end blocks; the file stays open (TarWriter does not own it)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._name)
        fsync_dir(self._name.parent)
        self._tar = self._file = self._tmp = None
        if self.post is not None:
            self.post(str(self._name))

    def _abort(self) -> None:
        """Drop the open shard: its temporary file is removed, nothing is renamed."""
        if self._tar is not None:
            try:  # closes tarfile's stream too (else its finaliser writes into the closed file)
                self._tar.close()
            except Exception:  # noqa: BLE001 - the file is deleted next; the original error propagates
                pass
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tar = self._file = self._tmp = None

    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise


def write_shards(
    folder: str | Path, out_pattern: str, maxcount: int = 1000, *, seed: int | None = 0
) -> ShardSummary:
    """Write the images under ``folder`` to tar shards named by ``out_pattern`` (e.g. ``'out/shard-%06d.tar'``).

    At most ``maxcount`` samples per shard. ``seed`` shuffles the sample order
    across shards (so each shard mixes classes); ``None`` keeps the folder's
    sorted order. The output directory is created. Raises :class:`DataError`
    for a missing/empty folder or an unreadable image.
    """
    _check_output(out_pattern, maxcount)
    root = Path(folder).expanduser()
    listing = scan_image_folder(root, who="write_shards")
    order = list(range(len(listing.files)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    Path(out_pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    captions = 0
    with ShardSink(out_pattern, maxcount, post=shards.append) as sink:
        for index in order:
            file = listing.files[index]
            sample: dict[str, object] = {"__key__": _key(index, file.relative_to(root)), "png": _png_bytes(file)}
            if listing.labels is not None:
                sample["cls"] = listing.labels[index]
            caption = file.with_suffix(".txt")
            if caption.is_file():
                sample["txt"] = caption.read_text(encoding="utf-8").strip()
                captions += 1
            sink.write(sample)
    return ShardSummary(tuple(shards), len(order), listing.class_names, captions)


def _encode_png(pixels: Tensor) -> bytes:
    """``(C, H, W)`` uint8, C = 1 or 3 -> PNG bytes."""
    array = pixels.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)  # uint8: mode L or RGB
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_source_shards(
    config: ComponentConfig, out_pattern: str, count: int | None, maxcount: int = 1000, *,
    split: Literal["train", "eval"] = "train", seed: int = 0, batch_size: int = 256,
) -> ShardSummary:
    """Write ``count`` examples of the registered image source ``config`` to tar shards named by ``out_pattern``.

    ``split="train"``: the first ``count`` examples of its training stream with ``seed`` (already shuffled;
    past one epoch of a finite source, examples repeat). ``split="eval"``: its held-out split in order,
    all of it when ``count`` is ``None``. At most ``maxcount`` samples per shard; the output directory is
    created. Raises :class:`DataError` for a source that does not yield 1- or 3-channel images.
    """
    _check_output(out_pattern, maxcount)
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    name = DATA_SOURCES.name_of(config)
    source = config.build()
    shape = source.spec.shape
    if source.spec.kind != "images" or shape[0] not in (1, 3):
        raise DataError(f"write_shards: source {name!r} yields {source.spec.kind} of shape {shape}; "
                        "shards hold 1- or 3-channel images")
    if split == "train":
        if count is None:
            raise ValueError("count is required for the training split (its stream is endless)")
        batches = source.train_batches(min(count, batch_size), seed=seed)
    else:
        batches = source.eval_batches(batch_size, max_examples=count)
    Path(out_pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    written = captions = annotations = 0
    with ShardSink(out_pattern, maxcount, post=shards.append) as sink:
        for batch in batches:
            pixels = (source.to_display(batch.x) * 255).round().clamp(0, 255).to(torch.uint8)
            for j in range(pixels.shape[0]):
                if written == count:
                    break
                sample: dict[str, object] = {"__key__": f"{written:08d}_{name}", "png": _encode_png(pixels[j])}
                if batch.label is not None:
                    sample["cls"] = int(batch.label[j])
                if batch.caption is not None:
                    sample["txt"] = batch.caption[j]
                    captions += 1
                if batch.annotation is not None:
                    sample["json"] = json.dumps(batch.annotation[j]).encode()
                    annotations += 1
                sink.write(sample)
                written += 1
            if written == count:
                break
    if written == 0:
        raise DataError(f"write_shards: source {name!r} has no held-out examples to write")
    class_names = tuple(getattr(source, "class_names", ())) or tuple(str(i) for i in range(source.spec.num_classes))
    return ShardSummary(tuple(shards), written, class_names, captions, annotations)


__all__ = [
    "CorruptSampleWarning", "ShardSink", "ShardSummary", "WebDatasetConfig", "WebDatasetSource", "write_shards",
    "write_source_shards",
]
