"""WebDataset support: write tar shards from an image folder; the ``webdataset`` source reads them.

Writing (the command line is ``ntm shards write``, in :mod:`experiments.cli`)::

    ntm shards write --folder data/cats_dogs --out 'shards/train-%06d.tar' --maxcount 1000

Each sample is ``{"__key__", "png", "cls"?, "txt"?}``: the image as PNG bytes
(PNG files are copied byte for byte, other formats re-encoded), the class
index when the folder has class subfolders (the layout of
:func:`ntm.data.folder.scan_image_folder`), and the caption from a ``.txt``
file with the same stem next to the image, when there is one.

Reading is :class:`ntm.data.streaming.WebDatasetSource` (registered as
``webdataset``), re-exported here.
"""

from __future__ import annotations

import dataclasses
import io
import random
import re
from pathlib import Path

import webdataset as wds
from PIL import Image

from ntm.data.base import DataError
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


def write_shards(
    folder: str | Path, out_pattern: str, maxcount: int = 1000, *, seed: int | None = 0
) -> ShardSummary:
    """Write the images under ``folder`` to tar shards named by ``out_pattern`` (e.g. ``'out/shard-%06d.tar'``).

    At most ``maxcount`` samples per shard. ``seed`` shuffles the sample order
    across shards (so each shard mixes classes); ``None`` keeps the folder's
    sorted order. The output directory is created. Raises :class:`DataError`
    for a missing/empty folder or an unreadable image.
    """
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    if "%" not in out_pattern:
        raise ValueError(f"out_pattern needs a shard-number placeholder such as %06d, got {out_pattern!r}")
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


__all__ = ["CorruptSampleWarning", "ShardSummary", "WebDatasetConfig", "WebDatasetSource", "write_shards"]
