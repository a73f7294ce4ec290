"""CLIP score of images against captions, with open_clip and weights from a local file only.

CLIP score (Hessel et al. 2021, as torchmetrics computes it): ``100 * max(cos(image, text), 0)`` between
the L2-normalised image and text embeddings of a CLIP model, per image. The model is an open_clip config
name (built-in, or registered with ``open_clip.add_model_config(json_path)``) built with random
weights and then loaded from ``weights_path``, a local checkpoint file (a state dict, as
``torch.save(model.state_dict(), path)`` writes). Nothing is ever downloaded: no weights path means no
score (:func:`clip_score` returns ``None`` with a one-line warning; :func:`load_clip` raises
:class:`ClipUnavailable`), and configs whose text tower or tokenizer comes from Hugging Face are refused.

Images: ``(N, 3, H, W)`` float in ``[0, 1]`` or uint8, resized (bicubic, antialiased) to the model's
input size and normalised with its mean and std (our images are square, so no crop).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class ClipUnavailable(RuntimeError):
    """CLIP score cannot be computed offline here (no local weights, or a config that would download)."""


class ClipScorer:
    """A loaded CLIP model, tokenizer and preprocessing; ``scorer(images, captions)`` -> ``(N,)`` CLIP scores."""

    def __init__(self, model: Any, tokenizer: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 name: str, weights_path: Path) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.name = name
        self.weights_path = weights_path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float in [0, 1] or uint8 -> the model's normalised ``(N, 3, size, size)`` input."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP score takes (N, 3, H, W) RGB images, got {tuple(getattr(images, 'shape', ()))}")
        x = images.to(torch.float32) / 255 if images.dtype == torch.uint8 else images.detach().to(torch.float32)
        if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
            raise ValueError("CLIP score takes float images in [0, 1] (map [-1, 1] outputs with to_display) or uint8")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        return ((x.clamp(0, 1) - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor, captions: Sequence[str], batch_size: int = 64) -> Tensor:
        """CLIP score of each image against its caption: ``(N,)`` float32 on the CPU, in ``[0, 100]``."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        self.model.eval()
        out = []
        for start in range(0, len(captions), batch_size):
            x = self.preprocess(images[start : start + batch_size])
            tokens = self.tokenizer(list(captions[start : start + batch_size])).to(self.device)
            image = F.normalize(self.model.encode_image(x).float(), dim=-1)
            text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            out.append((100 * (image * text).sum(-1)).clamp_min(0).cpu())
        return torch.cat(out) if out else torch.zeros(0)


def load_clip(model_name: str, weights_path: str | Path | None, *, device: str | torch.device = "cpu") -> ClipScorer:
    """The CLIP model ``model_name`` (an open_clip config name) with weights from the local file ``weights_path``.

    :class:`ClipUnavailable` (one line) without a weights path or for a config that would download (a
    schema such as ``hf-hub:``, a Hugging Face text tower or tokenizer); ``FileNotFoundError`` for a
    missing file; ``ValueError`` for an unknown config name.
    """
    if weights_path is None:
        raise ClipUnavailable(f"CLIP score skipped: no local weights path for {model_name!r} (ntm never downloads)")
    path = Path(weights_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    if ":" in model_name:
        raise ClipUnavailable(f"CLIP score skipped: {model_name!r} names a remote or directory source; "
                              "give an open_clip config name and a local weights file")
    import open_clip  # slow to import: only when a score is asked for

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"unknown open_clip model config {model_name!r} (register one with "
                         "open_clip.add_model_config(json_path))")
    text_cfg = config.get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg:
        raise ClipUnavailable(f"CLIP score skipped: {model_name!r} takes its text tower or tokenizer from "
                              "Hugging Face, which would download")
    with _quiet_random_init():
        model = open_clip.create_model(model_name, pretrained=None, pretrained_image=False, pretrained_text=False,
                                       device=device)
    open_clip.load_checkpoint(model, str(path), device="cpu")  # a path, never a tag: nothing downloads
    model.to(device).eval().requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", config["vision_cfg"].get("image_size", 224))
    size = size if isinstance(size, int) else int(size[0])
    mean = pp.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = pp.get("std") or open_clip.OPENAI_DATASET_STD
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipScorer(model, tokenizer, image_size=size, mean=mean, std=std, name=model_name, weights_path=path)


class _DropRandomInitNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init():
    """Hide open_clip's "initialized randomly" log line: the weights are loaded right after."""
    note = _DropRandomInitNote()
    root = logging.getLogger()
    root.addFilter(note)
    try:
        yield
    finally:
        root.removeFilter(note)


@functools.lru_cache(maxsize=2)
def _cached_clip(model_name: str, path: str, mtime_ns: int, device: str) -> ClipScorer:
    return load_clip(model_name, path, device=device)


def clip_score(
    images: Tensor,
    captions: Sequence[str],
    *,
    model_name: str,
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> Tensor | None:
    """Per-image CLIP score ``(N,)`` (``100 * max(cos, 0)``) of ``images`` against ``captions``.

    Without ``weights_path`` the score is skipped: returns ``None`` and warns in one line. The model is
    loaded once per (name, file, device) and kept (two at most). See :func:`load_clip` for the errors.
    """
    if weights_path is None:
        warnings.warn(f"CLIP score skipped: no local weights path for {model_name!r} (ntm never downloads)",
                      stacklevel=2)
        return None
    path = Path(weights_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    scorer = _cached_clip(model_name, str(path), path.stat().st_mtime_ns, str(torch.device(device)))
    return scorer(images, captions, batch_size=batch_size)


__all__ = ["ClipScorer", "ClipUnavailable", "clip_score", "load_clip"]
