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

Reading is :class:`ntm.data.streaming.WebDatasetSource` (registered as
``webdataset``), re-exported here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from pathlib import Path
from typing import Literal

import torch
import webdataset as wds
from PIL import Image
from torch import Tensor

from ntm.data.base import DATA_SOURCES, ComponentConfig, DataError
from ntm.data.folder import scan_image_folder
from ntm.data.streaming import CorruptSampleWarning, WebDatasetConfig, WebDatasetSource


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
    with wds.ShardWriter(out_pattern, maxcount=maxcount, verbose=0, post=lambda fname: shards.append(str(fname))) as sink:
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
    with wds.ShardWriter(out_pattern, maxcount=maxcount, verbose=0, post=lambda f: shards.append(str(f))) as sink:
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
    "CorruptSampleWarning", "ShardSummary", "WebDatasetConfig", "WebDatasetSource", "write_shards",
    "write_source_shards",
]
