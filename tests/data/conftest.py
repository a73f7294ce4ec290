"""Helpers for the data tests: tiny image folders whose pixels encode each image's id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

STEP = 10
"""Image ``i`` is a solid colour with red channel ``STEP * i`` (ids 0..25 fit in a byte)."""


def make_image_folder(
    root: Path, num_images: int, *, classes: tuple[str, ...] = (), size: tuple[int, int] = (12, 10),
    captions: dict[int, str] | None = None,
) -> Path:
    """Write ``num_images`` PNGs (``size`` = (width, height)); with ``classes``, image ``i`` goes to ``classes[i % len]``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(exist_ok=True)
        Image.new("RGB", size, (STEP * i, 255 - STEP * i, 7)).save(folder / f"img{i:03d}.png")
        if captions and i in captions:
            (folder / f"img{i:03d}.txt").write_text(captions[i])
    return root


def image_ids(x: torch.Tensor) -> list[int]:
    """Recover image ids from normalised RGB batches ``(B, 3, H, W)`` in [-1, 1]."""
    red = (x[:, 0] + 1) / 2 * 255  # (B, H, W)
    ids = torch.round(red.mean(dim=(1, 2)) / STEP).to(torch.long)
    return ids.tolist()


@pytest.fixture
def image_folder():
    """The :func:`make_image_folder` factory."""
    return make_image_folder


@pytest.fixture
def ids_of():
    """The :func:`image_ids` decoder."""
    return image_ids
