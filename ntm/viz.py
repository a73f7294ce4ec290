"""Pictures of samples: image grids and 2-D scatter densities, as tensors and PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ntm.atomic import atomic_write


def image_grid(images: Tensor, nrow: int, pad: int = 1, upscale: int = 1) -> Tensor:
    """``(B, C, H, W)`` in [0, 1] -> one ``(C, H', W')`` grid with ``nrow`` images per row."""
    b, c, h, w = images.shape
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        h, w = h * upscale, w * upscale
    rows = (b + nrow - 1) // nrow
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=images.dtype)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[i]
    return grid


def scatter_density(points: Tensor, size: int = 192, extent: float = 4.0) -> Tensor:
    """``(B, 2)`` points -> ``(1, size, size)`` log-density picture in [0, 1] over ``[-extent, extent]^2``."""
    p = points.detach().float().cpu()
    idx = ((p + extent) / (2 * extent) * size).long()
    keep = ((idx >= 0) & (idx < size)).all(-1)
    idx = idx[keep]
    hist = torch.zeros(size * size)
    hist.index_add_(0, (size - 1 - idx[:, 1]) * size + idx[:, 0], torch.ones(len(idx)))
    img = torch.log1p(hist.reshape(size, size))
    img = img / img.max().clamp_min(1e-9)
    return (1 - img)[None]  # dark = dense


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``(C, H, W)`` in [0, 1] (C = 1 or 3) as a PNG, atomically (:func:`ntm.atomic.atomic_write`: a
    reader never sees a partial figure); parent directories are created. Returns the path."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    return atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))


def load_png(path: str | os.PathLike[str]) -> Tensor:
    """A PNG as ``(C, H, W)`` in [0, 1] (C = 1 or 3)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if img.mode in ("L", "1", "I", "I;16") else "RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def _wrap(title: str, width: int, measure) -> list[str]:
    """``title`` in lines no wider than ``width`` pixels where it can break (after a space or a comma)."""
    import re

    words = [w for w in re.split(r"(?<=[ ,])", title) if w]
    lines: list[str] = []
    for word in words:
        if lines and measure(lines[-1] + word) <= width:
            lines[-1] += word
        else:
            lines.append(word)
    return [line.strip() for line in lines] or [""]


def titled_row(panels: list[tuple[str, Tensor]], gap: int = 12, title_height: int = 16) -> Tensor:
    """Pictures ``(C, H, W)`` in [0, 1] side by side on white, each under its title -> ``(3, H', W')``; a title
    wider than its picture is wrapped (at spaces and commas) onto more lines of ``title_height - 4`` pixels."""
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("titled_row needs at least one panel")
    images = [img.expand(3, -1, -1) if img.shape[0] == 1 else img for _, img in panels]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    titles = [_wrap(title, img.shape[2] + gap // 2, measure) for (title, _), img in zip(panels, images)]
    line = title_height - 4
    title_height += line * (max(len(t) for t in titles) - 1)
    height = title_height + max(img.shape[1] for img in images)
    width = sum(img.shape[2] for img in images) + gap * (len(images) + 1)
    canvas = torch.ones(3, height + gap, width)
    x = gap
    for img in images:
        canvas[:, title_height + gap // 2 : title_height + gap // 2 + img.shape[1], x : x + img.shape[2]] = img
        x += img.shape[2] + gap
    pil = Image.fromarray((canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    draw = ImageDraw.Draw(pil)
    x = gap
    for lines, img in zip(titles, images):
        for i, text in enumerate(lines):
            draw.text((x, 2 + i * line), text, fill=(0, 0, 0))
        x += img.shape[2] + gap
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def captioned_rows(rows: list[tuple[str, Tensor]], upscale: int = 1, pad: int = 2, caption_height: int = 14) -> Tensor:
    """One image row per caption, the caption written above it: ``[(caption, (n, C, H, W) in [0, 1])]`` ->
    ``(3, H', W')`` (a prompt grid). Rows may hold different numbers of images."""
    if not rows:
        raise ValueError("captioned_rows needs at least one row")
    grids = [image_grid(images, nrow=images.shape[0], pad=pad, upscale=upscale) for _, images in rows]
    panels = [(caption, grid) for (caption, _), grid in zip(rows, grids)]
    width = max(g.shape[2] for g in grids)
    height = sum(caption_height + g.shape[1] for g in grids)
    canvas = torch.ones(3, height, width)
    y = 0
    for _, grid in panels:
        canvas[:, y + caption_height : y + caption_height + grid.shape[1], : grid.shape[2]] = grid.expand(3, -1, -1)
        y += caption_height + grid.shape[1]
    from PIL import Image, ImageDraw

    pil = Image.fromarray((canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    draw = ImageDraw.Draw(pil)
    y = 0
    for caption, grid in panels:
        draw.text((pad, y + 1), caption or "(null condition)", fill=(0, 0, 0))
        y += caption_height + grid.shape[1]
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
