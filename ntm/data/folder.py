"""``image-folder``: a directory of images, flat (unconditional) or with one subfolder per class.

Layout::

    path/cat/001.png  path/dog/x.jpg  ...   -> labels from sorted subfolder names
    path/001.png  path/002.jpg  ...         -> unconditional

Class subfolders are searched recursively; names starting with ``.`` are
ignored. Every image is loaded once at build time with PIL, converted to
``channels`` (``L`` or ``RGB``), resized so its shorter side is
``image_size`` and centre-cropped to ``image_size x image_size`` (a plain
resize for square images), and kept as uint8; batches are normalised
``x / 255 * 2 - 1`` to ``[-1, 1]``. The whole folder lives in memory, so this
suits small datasets; shard large ones (:mod:`ntm.data.shards`).

Held-out split: the first ``round(eval_fraction * N)`` indices of a
permutation seeded by ``config.seed`` (at least one image when
``eval_fraction > 0``). Training stream: :class:`ntm.data.streams.InMemorySource`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import torch
from PIL import Image
from torch import Tensor

from ntm.data.base import DATA_SOURCES, ComponentConfig, DataError, DataSpec
from ntm.data.streams import InMemorySource, split_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class FolderListing:
    files: tuple[Path, ...]
    """Image files in a fixed (sorted) order."""
    labels: tuple[int, ...] | None
    """Class index per file, or ``None`` for a flat folder."""
    class_names: tuple[str, ...]
    """Subfolder name of each class index (empty for a flat folder)."""


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_image_folder(path: str | Path, *, who: str = "image-folder") -> FolderListing:
    """List the images under ``path``; a missing, empty or mixed layout raises :class:`DataError`.

    Subfolders holding images make it class-conditional (label = index in the
    sorted subfolder names); otherwise the images directly in ``path`` are
    unconditional.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{who}: {'not a directory' if root.exists() else 'no such directory'}: {root}")
    classes: list[tuple[str, list[Path]]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if _is_image(p) and not any(
            part.startswith(".") for part in p.relative_to(sub).parts))
        if files:
            classes.append((sub.name, files))
    top = sorted(p for p in root.iterdir() if _is_image(p))
    if classes and top:
        raise DataError(f"{who}: {root} mixes images at the top level with class subfolders; use one layout")
    if classes:
        files = tuple(f for _, fs in classes for f in fs)
        labels = tuple(i for i, (_, fs) in enumerate(classes) for _ in fs)
        return FolderListing(files, labels, tuple(name for name, _ in classes))
    if not top:
        raise DataError(f"{who}: no images ({'/'.join(IMAGE_EXTENSIONS)}) found under {root}")
    return FolderListing(tuple(top), None, ())


def pil_to_uint8(image: Image.Image, image_size: int, channels: int) -> Tensor:
    """PIL image -> ``(channels, image_size, image_size)`` uint8: shorter side resized, then centre-cropped."""
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def uint8_to_unit(x: Tensor) -> Tensor:
    """uint8 pixels ``0..255`` -> float32 ``x / 255 * 2 - 1`` in ``[-1, 1]`` (any shape)."""
    return x.to(torch.float32) / 255 * 2 - 1


def load_image(file: Path, image_size: int, channels: int, *, who: str = "image-folder") -> Tensor:
    """Read one image file -> ``(channels, image_size, image_size)`` uint8; unreadable -> :class:`DataError`."""
    try:
        with Image.open(file) as image:
            return pil_to_uint8(image, image_size, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{who}: cannot read image {file}: {exc}") from exc


class ImageFolderConfig(ComponentConfig):
    path: str
    """Directory of images (flat, or one subfolder per class)."""
    image_size: int = pydantic.Field(32, ge=1)
    """Side of the square images fed to the model (shorter side resized, then centre-cropped)."""
    channels: Literal[1, 3] = 3
    """1: greyscale, 3: RGB."""
    eval_fraction: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    """Fraction of the images held out for evaluation (0: none)."""
    seed: int = 0
    """Seed of the train / held-out split."""

    def build(self) -> "ImageFolder":
        return ImageFolder(self)


@DATA_SOURCES.register("image-folder", ImageFolderConfig)
class ImageFolder(InMemorySource):
    """``x (B, channels, image_size, image_size)`` float32 in ``[-1, 1]``; ``label (B,)`` for class folders."""

    def __init__(self, config: ImageFolderConfig) -> None:
        self.config = config
        listing = scan_image_folder(config.path)
        self.class_names = listing.class_names
        num_classes = len(listing.class_names)
        self.spec = DataSpec(shape=(config.channels, config.image_size, config.image_size),
                             num_classes=num_classes, kind="images")
        if len(listing.files) < 2 and config.eval_fraction > 0:
            raise DataError(f"image-folder: {config.path} has {len(listing.files)} image; a held-out split needs 2")
        images = torch.stack([load_image(f, config.image_size, config.channels) for f in listing.files])
        labels = None if listing.labels is None else torch.tensor(listing.labels, dtype=torch.long)
        self.train_indices, self.eval_indices = split_indices(
            images.shape[0], config.eval_fraction, config.seed, tag="image-folder"
        )
        self.files = listing.files
        self._set_splits(
            images[self.train_indices], None if labels is None else labels[self.train_indices],
            images[self.eval_indices], None if labels is None else labels[self.eval_indices],
        )

    def normalise(self, raw: Tensor) -> Tensor:
        return uint8_to_unit(raw)

    def stats(self) -> dict:
        return {"normalisation": "x / 255 * 2 - 1", "pixel_max": 255, "range": [-1.0, 1.0],
                "class_names": list(self.class_names)}

    def to_display(self, x: Tensor) -> Tensor:
        """``[-1, 1]`` -> ``[0, 1]``, same shape."""
        return ((x + 1) / 2).clamp(0, 1)


__all__ = [
    "IMAGE_EXTENSIONS", "FolderListing", "ImageFolder", "ImageFolderConfig", "load_image", "pil_to_uint8",
    "scan_image_folder", "uint8_to_unit",
]
