"""``shapes-eval``: a GenEval-style judge for the ``shapes`` source, where ground truth is known by construction.

GenEval scores a text-to-image model by detecting the objects in each
generated image and checking the prompt's claims (an object is there, two
are, exactly N are, it has that colour, it stands left of the other, ...).
Here the detector is a small network trained once on ground-truth renders of
:mod:`ntm.data.shapes` and cached on disk, so the whole evaluation is offline
and cheap, and the judge's own accuracy is measured on held-out renders.

The judge (:class:`ShapesJudge`) reads an image in three steps:

1. a *segmenter*, three 3x3 convolutions at full resolution, gives every pixel
   a foreground probability and a colour distribution (both are local
   decisions, so it is small and sharp: objects can be as little as 1.3
   pixels apart at 32x32);
2. the 8-connected components of the foreground (probability > 0.5) that
   cover at least ``min_area`` of the image are the objects
   (:func:`connected_components`, a deterministic label propagation in
   torch: scipy is not a dependency); each gets the colour of largest summed
   probability over its pixels, its box, area and centre (the centre of its
   pixel box: the source's convention);
3. a *classifier*, a small CNN, names the shape of each object from a crop:
   the object alone (everything else set to the background), a square of
   its box's longer side plus two pixels resampled to :data:`CROP` pixels,
   so that small and large objects look alike.

Why not per-pixel shape labels or a CenterNet-like peak head? The shape of a
pixel needs the whole object in view: a single-network per-pixel shape
labeller of a CPU-trainable size stayed near chance (28% of object pixels)
after a minute of training, while the crop classifier sees one centred,
scale-normalised object and learns it in seconds. Components rather than
peaks, because objects never overlap: components separate them exactly, and
counting is counting components. Pixel-wise losses give each training image
hundreds of labels, so the default judge trains in about a minute of one CPU core.

Training targets: each object, rendered alone, owns the pixels it covers by
at least half (pixel centres inside it, about); at the source's least gap
between boxes (0.04 of the side: 1.3 pixels at 32) a background pixel always
separates two objects. The classifier is trained on the crops of the
ground-truth objects. Training images are augmented (random horizontal flip;
and with probability ``augment_prob`` Gaussian blur, colour jitter and
Gaussian noise, each of random strength up to the config's maximum) so that
the judge tolerates imperfect generated images. The training scenes are the
source's with all 36 (colour, shape) pairs (``held_out_fraction=0``, seed
``data_seed``): the judge must read the held-out pairs too.

Scoring (:func:`verdict`, :func:`score_images`), GenEval's rules on the
prompt of :func:`ntm.data.shapes.parse_caption`:

========================  =============================================================================
``single_object``         at least one object of the shape
``two_object``            both shapes, on distinct objects
``counting``              exactly N objects of the shape *and colour* (our counting captions name one)
``colors``                an object of the shape has the colour
``position``              both (colour, shape) objects, and the subject's centre lies in the relation's
                          direction from the reference's: at least :data:`POSITION_MARGIN` of the side
                          along the axis, and within 60 degrees of it (the cone GenEval's rule uses)
``color_attr``            both (colour, shape) objects, on distinct objects
========================  =============================================================================

``overall`` is the mean of the per-category accuracies (GenEval's), over the
categories present; with ``held_out`` pairs results are also split into
prompts naming a held-out (colour, shape) pair ("unseen") and the rest.

Trust. The judge's accuracy per category is measured when it is trained, on
the ``seen`` and ``unseen`` held-out splits of the default source config
(seed ``eval_seed``), clean and augmented, and stored in its metadata
(``info["accuracy"]``): a scene counts as right when the read-back is exact
(as many detections as objects, each object's box holding the centre of one
detection of its shape and colour) and the verdicts agree with the ground
truth on the scene's own prompt (true) and on a contrast prompt (false: an
absent shape, another colour, one more, the opposite relation, the colours
swapped). :func:`score_images` raises :class:`JudgeNotTrusted` when any
measured accuracy is below :data:`TRUST_THRESHOLD` (``allow_untrusted=True``
warns instead).

Caching follows :mod:`eval.domain_classifier`: :func:`load_or_train_judge`
loads ``<cache_dir>/<key>.pt`` or trains and writes it atomically; the key
(:func:`judge_key`) hashes :data:`JUDGE_VERSION`, the judge config, the data
configs and a fingerprint of a few rendered training scenes (so a change to
the renderer invalidates it); ``cache_dir`` defaults to
``$NTM_CACHE/shapes_judge`` (``~/.cache/ntm/shapes_judge``).
``python -m ntm.eval.shapes_judge`` trains or loads the default judge and prints
its accuracy table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.eval.cache import cache_path, load_or_train, read_payload, write_payload
from ntm.eval.cache import default_cache_dir as _cache_dir
from ntm.data.shapes import (
    BACKGROUND,
    CATEGORIES,
    COLOURS,
    SHAPES,
    Shapes,
    ShapesConfig,
    parse_caption,
    prompt_of,
    render,
)

CACHE_DIR = "shapes_judge"
"""The judges' directory under the cache root (:data:`~ntm.eval.cache.CACHE_ENV`)."""
JUDGE_VERSION = 1
"""Bumped when the judge's architecture, targets, training or accuracy measurement change (part of the cache key)."""
TRUST_THRESHOLD = 0.95
"""Least measured accuracy, per category and evaluation set, for :func:`score_images` to trust a judge."""
POSITION_MARGIN = 0.05
"""Least displacement of the subject's centre along a position relation's axis, as a fraction of the image side.
(The source's position scenes are at least 0.24 apart along it.)"""
POSITION_CONE = math.tan(math.radians(60))
"""The subject's displacement across the relation's axis may be at most this times the one along it (60 degrees;
the source's scenes stay within 45)."""
COLOUR_NAMES = tuple(COLOURS)
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CROP = 16
"""Side of the object crops the shape classifier reads."""
EVAL_SETS = ("clean/seen", "clean/unseen", "augmented/seen", "augmented/unseen")
"""The judge's accuracy is measured on these (source split, with or without the training augmentation)."""


class JudgeNotTrusted(RuntimeError):
    """The judge's measured accuracy is below :data:`TRUST_THRESHOLD` somewhere (or was never measured)."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Architecture, training data and hyper-parameters of a :class:`ShapesJudge` (all part of the cache key)."""

    image_size: int = 32
    """Image side the judge reads: 16, 32 or 64 (one judge per size)."""
    width: int = 16
    """Channels of the segmenter and of the classifier's first layer (the classifier widens to 2x and 4x)."""
    train_size: int = 20000
    """Training scenes: the ``train`` split of ``ShapesConfig(seed=data_seed, held_out_fraction=0)``."""
    counting_weight: float = 2.0
    """Category weight of counting scenes in training (the others weigh 1): crowded scenes are the hard ones."""
    epochs: int = 1
    batch_size: int = 16
    """Small batches: more steps for the same compute (1250 steps learn as well as 940 steps of 64 scenes, in
    half the time)."""
    lr: float = 4e-3
    weight_decay: float = 1e-4
    noise: float = 0.05
    """Augmentation: largest standard deviation of additive Gaussian noise (images in [0, 1])."""
    blur: float = 0.7
    """Augmentation: largest Gaussian blur sigma, in pixels of a 32-pixel image (scaled with ``image_size``)."""
    jitter: float = 0.06
    """Augmentation: colour jitter, per-channel gain in ``1 +- jitter`` and offset in ``+- jitter / 2``."""
    augment_prob: float = 0.8
    """Fraction of training images augmented (blur, jitter, noise); the rest are clean (flips apply to all)."""
    min_area: float = 0.003
    """Least area of a detection, as a fraction of the image (the smallest object, a small star, covers about 0.012)."""
    seed: int = 0
    """Seed of the initialisation, the training order and the augmentation."""
    data_seed: int = 1
    """Seed of the training scenes (the held-out evaluation scenes use ``eval_seed``)."""
    eval_seed: int = 0
    """Seed of the evaluation source (the default source's seed): its ``seen`` and ``unseen`` splits."""
    eval_size: int = 1000
    """Scenes of each evaluation split the accuracy is measured on."""

    def __post_init__(self) -> None:
        if self.image_size not in (16, 32, 64):
            raise ValueError(f"JudgeConfig.image_size must be 16, 32 or 64, got {self.image_size}")
        for name in ("width", "train_size", "epochs", "batch_size", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or min(self.noise, self.blur, self.jitter) < 0:
            raise ValueError("JudgeConfig needs lr > 0 and weight_decay, noise, blur, jitter >= 0")
        if not 0 <= self.augment_prob <= 1 or not 0 < self.min_area < 1 or self.counting_weight < 0:
            raise ValueError("JudgeConfig needs 0 <= augment_prob <= 1, 0 < min_area < 1, counting_weight >= 0")


def data_configs(config: JudgeConfig) -> tuple[ShapesConfig, ShapesConfig]:
    """``(train, eval)`` source configs: all 36 pairs in training; the default hold-out for evaluation."""
    weights = {c: (config.counting_weight if c == "counting" else 1.0) for c in CATEGORIES}
    train = ShapesConfig(seed=config.data_seed, image_size=config.image_size, train_size=config.train_size,
                         eval_size=1, held_out_fraction=0.0, category_weights=weights)
    held = ShapesConfig(seed=config.eval_seed, image_size=config.image_size, train_size=1, eval_size=config.eval_size)
    return train, held


# -- the network ---------------------------------------------------------------------------------------------------
class ShapesJudge(nn.Module):
    """Two small networks: a per-pixel ``segmenter`` and an object ``classifier``.

    ``segmenter``: ``(B, 3, S, S)`` -> ``(B, 1 + len(COLOURS), S, S)``: a foreground logit and colour logits
    per pixel (three 3x3 convolutions: both are local decisions). ``classifier``: a crop of one object,
    ``(N, 3, CROP, CROP)`` (the object's square surroundings resampled to :data:`CROP` pixels, everything
    off the object set to the background), -> ``(N, len(SHAPES))`` shape logits.

    Reads ``(B, 3, S, S)`` images in ``[0, 1]`` (float) or ``0..255`` (uint8) at its ``image_size``.
    After :func:`load_or_train_judge`: ``config``, ``info`` (training metadata and measured accuracy),
    ``cache_path`` and ``from_cache``.
    """

    def __init__(self, config: JudgeConfig = JudgeConfig()) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        w = config.width

        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.segmenter = nn.Sequential(*conv(3, w), *conv(w, w), *conv(w, w), nn.Conv2d(w, 1 + len(COLOURS), 1))
        self.classifier = nn.Sequential(
            *conv(3, w), *conv(w, 2 * w, stride=2), *conv(2 * w, 2 * w),  # CROP / 2
            *conv(2 * w, 4 * w, stride=2), *conv(4 * w, 4 * w),  # CROP / 4
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, len(SHAPES)),
        )  # fmt: skip
        self.info: dict[str, Any] = {}
        self.cache_path: Path | None = None
        self.from_cache = False

    def segment(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in ``[0, 1]`` -> ``(foreground logit (B, S, S), colour logits (B, 6, S, S))``."""
        out = self.segmenter(x * 2 - 1)
        return out[:, 0], out[:, 1:]

    def prepare(self, images: Tensor) -> Tensor:
        """Check ``(B, 3, S, S)`` at this judge's size and return float ``[0, 1]`` on the judge's device."""
        s = self.image_size
        if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            got = tuple(getattr(images, "shape", ()))
            raise ValueError(f"the shapes judge reads (B, 3, {s}, {s}) images, got {got}")
        device = next(self.parameters()).device
        if images.dtype == torch.uint8:
            return images.to(device, torch.float32) / 255
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
        x = images.detach().to(device, torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("images contain nan or inf")
        if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
            raise ValueError(f"float images must lie in [0, 1] (got [{float(x.min()):.3g}, {float(x.max()):.3g}]); "
                             "map model outputs in [-1, 1] with the source's to_display")
        return x.clamp(0, 1)

    @torch.no_grad()
    def detect(self, images: Tensor, batch_size: int = 256) -> list[list[dict]]:
        """The objects in each image: a list per image of ``{"shape", "colour", "centre": [x, y],
        "bbox": [x0, y0, x1, y1], "area", "confidence"}`` (fractions of the image side / area, ``y`` down;
        ``confidence`` is the mean foreground probability of the object's pixels times the classifier's
        probability of its shape), in a fixed order (by the last pixel of each object, row-major)."""
        was_training = self.training
        self.eval()
        out: list[list[dict]] = []
        x = self.prepare(images)
        for xb in x.split(batch_size):
            fg_logit, colour_logits = self.segment(xb)
            out += self._decode(xb, fg_logit.sigmoid(), colour_logits.softmax(1))
        self.train(was_training)
        return out

    def _decode(self, x: Tensor, p_fg: Tensor, p_colour: Tensor) -> list[list[dict]]:
        b, s = x.shape[0], self.image_size
        regions = find_regions(p_fg > 0.5, self.config.min_area)
        out: list[list[dict]] = [[] for _ in range(b)]
        n = len(regions["image"])
        if n == 0:
            return out
        p_shape = self.classifier(object_crops(x, regions)).softmax(1)
        colour_votes = x.new_zeros(n, len(COLOURS)).index_add_(0, regions["inverse"], p_colour.permute(0, 2, 3, 1)
                                                                .reshape(-1, len(COLOURS))[regions["pixels"]])
        fg_mean = x.new_zeros(n).index_add_(0, regions["inverse"], p_fg.flatten()[regions["pixels"]]) / regions["area"]
        shape_p, shape_idx = p_shape.max(1)
        conf = (fg_mean * shape_p).tolist()
        rows = (regions["box"] / s).tolist()
        areas = (regions["area"] / (s * s)).tolist()
        for k, (image, sh, col) in enumerate(zip(regions["image"].tolist(), shape_idx.tolist(),
                                                 colour_votes.argmax(1).tolist())):
            x0, y0, x1, y1 = rows[k]
            out[image].append({
                "shape": SHAPES[sh], "colour": COLOUR_NAMES[col], "centre": [(x0 + x1) / 2, (y0 + y1) / 2],
                "bbox": [x0, y0, x1, y1], "area": areas[k], "confidence": conf[k],
            })  # fmt: skip
        return out

    @property
    def trusted(self) -> bool:
        return not self.untrusted()

    def untrusted(self) -> list[str]:
        """``"set/category: accuracy"`` for every measured accuracy below :data:`TRUST_THRESHOLD` (all, if none)."""
        accuracy = self.info.get("accuracy")
        if not accuracy:
            return ["accuracy never measured"]
        return [f"{name}/{cat}: {acc:.3f}" for name, per in accuracy.items() for cat, acc in per.items()
                if acc < TRUST_THRESHOLD]


# -- connected components, regions and crops -----------------------------------------------------------------------
def connected_components(mask: Tensor) -> Tensor:
    """8-connected components of ``mask (B, H, W)`` bool: ``(B, H, W)`` int64, 0 off the mask, else a label.

    Each pixel starts with its own row-major index + 1 and repeatedly takes the largest label in its 3x3
    neighbourhood within the mask until nothing changes: every component ends up labelled by its last pixel
    (deterministic; as many rounds as the longest path inside a component).
    """
    if mask.ndim != 3 or mask.dtype != torch.bool:
        raise ValueError(f"connected_components takes a (B, H, W) bool mask, got {tuple(mask.shape)} {mask.dtype}")
    h, w = mask.shape[1:]
    if h * w >= 1 << 24:  # labels travel as float32 through max_pool2d
        raise ValueError("connected_components: images up to 2**24 pixels")
    m = mask[:, None].to(torch.float32)
    labels = torch.arange(1, h * w + 1, dtype=torch.float32, device=mask.device).view(1, 1, h, w) * m
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[:, 0].to(torch.int64)


def find_regions(mask: Tensor, min_area: float) -> dict[str, Tensor]:
    """The connected components of ``mask (B, S, S)`` covering at least ``min_area`` of the image.

    Returns tensors over the ``n`` regions kept (ordered by image, then label): ``image (n,)``, ``label (n,)``
    (see :func:`connected_components`), ``area (n,)`` in pixels, ``box (n, 4)`` ``[x0, y0, x1, y1]`` in pixels
    (exclusive ends); and over their pixels: ``pixels`` (flat indices into ``(B, S, S)``) and ``inverse`` (the
    region of each); ``labels`` is the ``(B, S, S)`` component map (0 also on dropped components).
    """
    s = mask.shape[-1]
    labels = connected_components(mask)
    flat = labels.flatten()
    on = flat.nonzero()[:, 0]
    key = (on // (s * s)) * (s * s + 1) + flat[on]  # (image, label), sorted like that
    ids, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    keep = counts.to(torch.float32) >= min_area * s * s
    if not bool(keep.all()):
        labels = _drop(labels, on, inverse, keep)
        new_index = torch.cumsum(keep.to(torch.int64), 0) - 1
        pix_keep = keep[inverse]
        on, inverse = on[pix_keep], new_index[inverse[pix_keep]]
        ids, counts = ids[keep], counts[keep]
    n = ids.shape[0]
    pix = on % (s * s)
    ys, xs = (pix // s).to(torch.float32), (pix % s).to(torch.float32)
    low, high = xs.new_full((n,), float(s)), xs.new_full((n,), -1.0)
    box = torch.stack([
        low.clone().scatter_reduce_(0, inverse, xs, "amin"),
        low.clone().scatter_reduce_(0, inverse, ys, "amin"),
        high.clone().scatter_reduce_(0, inverse, xs, "amax") + 1,
        high.clone().scatter_reduce_(0, inverse, ys, "amax") + 1,
    ], 1)  # fmt: skip
    return {"image": ids // (s * s + 1), "label": ids % (s * s + 1), "area": counts.to(torch.float32), "box": box,
            "pixels": on, "inverse": inverse, "labels": labels}


def _drop(labels: Tensor, on: Tensor, inverse: Tensor, keep: Tensor) -> Tensor:
    """``labels`` with the pixels of the regions not kept set to 0."""
    flat = labels.flatten().clone()
    flat[on[~keep[inverse]]] = 0
    return flat.view_as(labels)


def object_crops(x: Tensor, regions: dict[str, Tensor]) -> Tensor:
    """Each region's surroundings, ``(n, 3, CROP, CROP)``: the image minus the background colour, zero off the
    region (grown by one pixel, to keep its anti-aliased rim), in a square of side ``max(box side) + 2`` pixels
    around the box centre resampled (bilinear) to :data:`CROP` pixels, so every object fills the crop alike."""
    s = x.shape[-1]
    image, label, box = regions["image"], regions["label"], regions["box"]
    own = (regions["labels"][image] == label[:, None, None]).to(x.dtype)[:, None]  # (n, 1, S, S)
    own = F.max_pool2d(own, 3, stride=1, padding=1)
    bg = torch.tensor(BACKGROUND, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    delta = (x[image] - bg) * own
    centre = (box[:, :2] + box[:, 2:]) / 2  # pixels, (x, y)
    half = (box[:, 2:] - box[:, :2]).amax(1) / 2 + 1
    u = (torch.arange(CROP, dtype=x.dtype, device=x.device) + 0.5) / CROP * 2 - 1  # (CROP,) in (-1, 1)
    gx = centre[:, 0, None] + half[:, None] * u  # (n, CROP) pixels
    gy = centre[:, 1, None] + half[:, None] * u
    grid = torch.stack([gx[:, None, :].expand(-1, CROP, -1), gy[:, :, None].expand(-1, -1, CROP)], -1) / s * 2 - 1
    return F.grid_sample(delta, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# -- training data -------------------------------------------------------------------------------------------------
def label_maps(annotations: Sequence[dict], image_size: int) -> tuple[Tensor, Tensor]:
    """Per-pixel targets of scenes: ``(shape (N, S, S), colour (N, S, S))`` uint8.

    ``shape`` is 0 on background and ``1 + SHAPES.index`` on an object's pixels; ``colour`` is
    ``1 + COLOURS index`` there and 0 on background. A pixel belongs to an object when the object,
    rendered alone, covers at least half of it.
    """
    n, s = len(annotations), image_size
    code = torch.zeros(n, s, s, dtype=torch.float32)  # 8 * shape + colour (objects' ids), 0 on background
    singles = [(i, o) for i, scene in enumerate(annotations) for o in scene["objects"]]
    bg = torch.tensor(BACKGROUND, dtype=torch.float32)
    for start in range(0, len(singles), 2048):
        chunk = singles[start : start + 2048]
        imgs = render([{"objects": [o]} for _, o in chunk], s).to(torch.float32)  # (k, 3, S, S)
        delta = torch.tensor([COLOURS[o["colour"]] for _, o in chunk], dtype=torch.float32) - bg  # (k, 3)
        channel = delta.abs().argmax(1)
        k = torch.arange(len(chunk))
        coverage = (imgs[k, channel] - bg[channel][:, None, None]) / delta[k, channel][:, None, None]
        scene = torch.tensor([i for i, _ in chunk])
        ids = torch.tensor([8 * (1 + SHAPES.index(o["shape"])) + 1 + COLOUR_NAMES.index(o["colour"])
                            for _, o in chunk], dtype=torch.float32)
        # objects do not overlap, so at most two (half each, below 1.3 pixels apart) can claim a pixel: one wins
        claims = ((coverage >= 0.5) * ids[:, None, None]).view(len(chunk), s * s)
        code.view(n, s * s).scatter_reduce_(0, scene[:, None].expand(-1, s * s), claims, "amax")
    code = code.to(torch.int64)
    return (code // 8).to(torch.uint8), (code % 8).to(torch.uint8)


def augment(x: Tensor, config: JudgeConfig, gen: torch.Generator, prob: float = 1.0) -> Tensor:
    """Blur, colour jitter and noise of random strength on a fraction ``prob`` of ``x (B, 3, S, S)`` in [0, 1].

    Per image: Gaussian blur sigma ``U(0, blur * S / 32)`` pixels, per-channel gain ``U(1 - jitter, 1 + jitter)``
    and offset ``U(-jitter / 2, jitter / 2)``, Gaussian noise of std ``U(0, noise)``; clamped to [0, 1].
    """
    b, c, h, w = x.shape
    on = (torch.rand(b, generator=gen) < prob).to(x.dtype)
    sigma = torch.rand(b, generator=gen) * config.blur * h / 32
    radius = max(1, math.ceil(3 * config.blur * h / 32))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, taps)
    kernel = kernel.repeat_interleave(c, 0)  # one per image and channel
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c).view(b, c, h, w)
    gain = 1 + (torch.rand(b, c, 1, 1, generator=gen) * 2 - 1) * config.jitter
    offset = (torch.rand(b, c, 1, 1, generator=gen) * 2 - 1) * config.jitter / 2
    std = torch.rand(b, 1, 1, 1, generator=gen) * config.noise
    y = y * gain + offset + torch.randn(x.shape, generator=gen) * std
    on = on[:, None, None, None]
    return (on * y + (1 - on) * x).clamp_(0, 1)


def _render_split(source: Shapes, split: str) -> tuple[Tensor, list[dict]]:
    """All kept scenes of a split: uint8 images and annotations."""
    batch = source.examples(split, list(range(source.num_examples(split))))
    images = ((batch.x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return images, list(batch.annotation)


# -- scoring -------------------------------------------------------------------------------------------------------
def _matches(obj: dict, det: dict) -> bool:
    return det["shape"] == obj["shape"] and (obj.get("colour") is None or det["colour"] == obj["colour"])


def relation_holds(subject: Sequence[float], reference: Sequence[float], relation: str) -> bool:
    """Does the centre ``subject (x, y)`` stand ``relation`` of ``reference`` (``y`` down)?

    Along the relation's axis the subject is at least :data:`POSITION_MARGIN` beyond the reference, and
    across it at most :data:`POSITION_CONE` times that far (within 60 degrees of the axis).
    """
    dx, dy = subject[0] - reference[0], subject[1] - reference[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along >= POSITION_MARGIN and abs(across) <= POSITION_CONE * along


def verdict(prompt: dict | str, detections: Sequence[dict]) -> bool:
    """Does an image with ``detections`` (from :meth:`ShapesJudge.detect`) satisfy ``prompt``?

    ``prompt``: a caption of the shapes grammar or its parsed form (:func:`ntm.data.shapes.parse_caption`).
    The rules of the module docstring; objects named twice must be distinct detections.
    """
    if isinstance(prompt, str):
        prompt = parse_caption(prompt)
    category, objs = prompt["category"], prompt["objects"]
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; categories: {', '.join(CATEGORIES)}")
    if category == "counting":
        return sum(_matches(objs[0], d) for d in detections) == len(objs)
    candidates = [[j for j, d in enumerate(detections) if _matches(o, d)] for o in objs]
    for chosen in itertools.product(*candidates):
        if len(set(chosen)) < len(chosen):
            continue
        if category != "position":
            return True
        if relation_holds(detections[chosen[0]]["centre"], detections[chosen[1]]["centre"], prompt["relation"]):
            return True
    return False


def named_pairs(prompt: dict) -> set[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a prompt names (none where it names no colour)."""
    return {(o["colour"], o["shape"]) for o in prompt["objects"] if o.get("colour") is not None}


def summarise(
    prompts: Sequence[dict], verdicts: Sequence[bool], held_out: Iterable[tuple[str, str]] | None = None
) -> dict:
    """Per-category accuracy of ``verdicts``: ``{"overall", "per_category", "counts"}`` (+ ``"seen"`` / ``"unseen"``).

    ``overall`` is the mean of the per-category accuracies over the categories present (GenEval's overall
    when all six are; ``None`` when there are no prompts). With ``held_out`` (``(colour, shape)`` pairs, e.g.
    :func:`ntm.data.shapes.held_out_pairs`) the same summary is given for the prompts naming a held-out pair
    (``"unseen"``) and the others (``"seen"``; prompts that name no colour are always seen).
    """
    if len(prompts) != len(verdicts):
        raise ValueError(f"{len(prompts)} prompts but {len(verdicts)} verdicts")

    def table(items: list[tuple[dict, bool]]) -> dict:
        counts = {c: 0 for c in CATEGORIES}
        right = {c: 0 for c in CATEGORIES}
        for p, v in items:
            counts[p["category"]] += 1
            right[p["category"]] += bool(v)
        per = {c: right[c] / counts[c] for c in CATEGORIES if counts[c]}
        return {"overall": sum(per.values()) / len(per) if per else None, "per_category": per,
                "counts": {c: n for c, n in counts.items() if n}}

    items = list(zip(prompts, verdicts))
    out = table(items)
    if held_out is not None:
        held = {tuple(p) for p in held_out}
        out["unseen"] = table([(p, v) for p, v in items if named_pairs(p) & held])
        out["seen"] = table([(p, v) for p, v in items if not named_pairs(p) & held])
    return out


def score_images(
    judge: ShapesJudge,
    images: Tensor,
    captions: Sequence[str | dict],
    *,
    held_out: Iterable[tuple[str, str]] | None = None,
    allow_untrusted: bool = False,
    batch_size: int = 256,
) -> dict:
    """GenEval-style scores of ``images (N, 3, S, S)`` (float in [0, 1] or uint8) against their ``captions``.

    Returns :func:`summarise`'s dict plus ``"verdicts"`` (one bool per image, in order). Raises
    :class:`JudgeNotTrusted` (one line) if the judge's measured accuracy is below :data:`TRUST_THRESHOLD`
    anywhere; ``allow_untrusted=True`` warns instead.
    """
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    failing = judge.untrusted()
    if failing:
        message = f"the shapes judge is not trusted (accuracy < {TRUST_THRESHOLD}): {'; '.join(failing)}"
        if not allow_untrusted:
            raise JudgeNotTrusted(message)
        warnings.warn(message, stacklevel=2)
    prompts = [parse_caption(c) if isinstance(c, str) else c for c in captions]
    detections = judge.detect(images, batch_size=batch_size)
    verdicts = [verdict(p, d) for p, d in zip(prompts, detections)]
    return {**summarise(prompts, verdicts, held_out), "verdicts": verdicts}


# -- the judge's own accuracy --------------------------------------------------------------------------------------
def contrast_prompt(annotation: dict) -> dict:
    """A prompt the scene must fail, minimally different from its own (deterministic):

    single_object / two_object: a shape absent from the scene replaces the (last) named one; colors: another
    colour; counting: one object more; position: the opposite relation; color_attr: the two colours swapped.
    """
    prompt = prompt_of(annotation)
    objs = [dict(o) for o in prompt["objects"]]
    category = prompt["category"]
    present = {o["shape"] for o in annotation["objects"]}
    if category in ("single_object", "two_object"):
        objs[-1]["shape"] = next(s for s in SHAPES if s not in present)
    elif category == "colors":
        taken = {o["colour"] for o in annotation["objects"] if o["shape"] == objs[0]["shape"]}
        objs[0]["colour"] = next(c for c in COLOUR_NAMES if c not in taken)
    elif category == "counting":
        objs.append(dict(objs[0]))
    elif category == "position":
        return {**prompt, "relation": OPPOSITE[prompt["relation"]]}
    else:
        objs[0]["colour"], objs[1]["colour"] = objs[1]["colour"], objs[0]["colour"]
    return {**prompt, "objects": objs}


def read_back_exact(annotation: dict, detections: Sequence[dict], image_size: int) -> bool:
    """As many detections as objects, and each object's box (grown by a pixel) holds the centre of exactly one
    detection, of the object's shape and colour."""
    if len(detections) != len(annotation["objects"]):
        return False
    pad = 1 / image_size
    for o in annotation["objects"]:
        x0, y0, x1, y1 = o["bbox"]
        inside = [d for d in detections
                  if x0 - pad <= d["centre"][0] <= x1 + pad and y0 - pad <= d["centre"][1] <= y1 + pad]
        if len(inside) != 1 or (inside[0]["shape"], inside[0]["colour"]) != (o["shape"], o["colour"]):
            return False
    return True


def judge_accuracy(judge: ShapesJudge, images: Tensor, annotations: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per category, on ground-truth ``images`` with their ``annotations``: ``{"accuracy", "read_back",
    "own_prompt", "contrast"}`` -> ``{category: fraction}``.

    ``read_back``: exact read-back (:func:`read_back_exact`); ``own_prompt``: the scene's own prompt passes;
    ``contrast``: its :func:`contrast_prompt` fails; ``accuracy``: all three at once.
    """
    detections = judge.detect(images)
    rows: dict[str, list[tuple[bool, bool, bool]]] = {}
    for a, d in zip(annotations, detections):
        rows.setdefault(a["category"], []).append(
            (read_back_exact(a, d, judge.image_size), verdict(prompt_of(a), d), not verdict(contrast_prompt(a), d)))
    out: dict[str, dict[str, float]] = {"accuracy": {}, "read_back": {}, "own_prompt": {}, "contrast": {}}
    for category in CATEGORIES:
        if category not in rows:
            continue
        r = rows[category]
        out["accuracy"][category] = sum(all(t) for t in r) / len(r)
        for i, name in enumerate(("read_back", "own_prompt", "contrast")):
            out[name][category] = sum(t[i] for t in r) / len(r)
    return out


def measure_judge(judge: ShapesJudge) -> dict[str, Any]:
    """The judge's accuracy on each of :data:`EVAL_SETS` (the source's ``seen`` / ``unseen`` held-out splits
    of seed ``eval_seed``, clean and augmented with a fixed seed): ``{"accuracy": {set: {category: acc}},
    "details": {set: judge_accuracy(...)}, "eval_examples": n}``."""
    config = judge.config
    source = Shapes(data_configs(config)[1])
    out: dict[str, Any] = {"accuracy": {}, "details": {}, "eval_examples": config.eval_size}
    for split in ("seen", "unseen"):
        images, annotations = _render_split(source, split)
        clean = images.to(torch.float32) / 255
        gen = torch.Generator().manual_seed(config.eval_seed + 7919)
        for name, x in (("clean", clean), ("augmented", augment(clean, config, gen))):
            details = judge_accuracy(judge, x, annotations)
            out["details"][f"{name}/{split}"] = details
            out["accuracy"][f"{name}/{split}"] = details["accuracy"]
    return out


# -- training ------------------------------------------------------------------------------------------------------
def train_judge(config: JudgeConfig = JudgeConfig(), *, measure: bool = True, threads: int | None = 1) -> ShapesJudge:
    """Train a :class:`ShapesJudge` on ground-truth renders (CPU, seeded; the global RNG is left untouched).

    ``threads``: torch threads while training (restored after; ``None`` keeps the current setting). One by
    default: the networks are too small to gain from more, the result is then the same on every machine,
    and on a busy machine more threads are much slower (two threads next to a running benchmark took
    over 15 minutes where one took about one).

    AdamW with a one-cycle learning rate; loss = binary cross-entropy of foreground over all pixels + cross-entropy
    of the colour over object pixels + cross-entropy of the shape of each ground-truth object's crop. ``info``
    gets ``train_seconds`` (wall, rendering included), ``train_cpu_seconds``, ``render_seconds``,
    ``train_examples``, ``threads`` and, with ``measure``, :func:`measure_judge`'s accuracy.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.enable_grad():  # a caller sampling under no_grad may be the first to need the judge
            return _train(config, measure)
    finally:
        torch.set_num_threads(previous)


def _train(config: JudgeConfig, measure: bool) -> ShapesJudge:
    start, cpu_start = time.perf_counter(), time.process_time()
    train_cfg = data_configs(config)[0]
    images, annotations = _render_split(Shapes(train_cfg), "train")
    shape_map, colour_map = label_maps(annotations, config.image_size)
    render_seconds = time.perf_counter() - start
    n, s = images.shape[0], config.image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        judge = ShapesJudge(config)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.AdamW(judge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps = config.epochs * math.ceil(n / config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
        judge.train()
        for _ in range(config.epochs):
            for idx in torch.randperm(n, generator=gen).split(config.batch_size):
                x = images[idx].to(torch.float32) / 255
                ys, yc = shape_map[idx].long(), colour_map[idx].long() - 1  # colour -1 on background: ignored
                flip = torch.rand(idx.shape[0], generator=gen) < 0.5
                x[flip], ys[flip], yc[flip] = x[flip].flip(-1), ys[flip].flip(-1), yc[flip].flip(-1)
                x = augment(x, config, gen, config.augment_prob)
                fg_logit, colour_logits = judge.segment(x)
                fg = ys > 0
                loss = F.binary_cross_entropy_with_logits(fg_logit, fg.to(x.dtype)) + F.cross_entropy(
                    colour_logits, yc, ignore_index=-1)
                regions = find_regions(fg, config.min_area)  # the objects (a star's lone spike pixels dropped)
                if regions["image"].numel():
                    target = ys.flatten()[regions["image"] * s * s + regions["label"] - 1] - 1
                    loss = loss + F.cross_entropy(judge.classifier(object_crops(x, regions)), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    judge.eval()
    judge.requires_grad_(False)
    judge.info = {
        "train_seconds": time.perf_counter() - start, "train_cpu_seconds": time.process_time() - cpu_start,
        "render_seconds": render_seconds, "train_examples": n,
        "final_loss": float(loss.detach()), "threads": torch.get_num_threads(), "torch_version": str(torch.__version__),
    }  # fmt: skip
    if measure:
        judge.info.update(measure_judge(judge))
    return judge


# -- caching -------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$NTM_CACHE/shapes_judge`` if ``NTM_CACHE`` is set, else ``~/.cache/ntm/shapes_judge``."""
    return _cache_dir(CACHE_DIR)


def judge_key(config: JudgeConfig = JudgeConfig()) -> str:
    """Content hash (hex, 128 bits) of :data:`JUDGE_VERSION`, the judge config, both data configs and the
    bytes of the first 8 training scenes rendered (a renderer change changes the key): the cache key."""
    train_cfg, eval_cfg = data_configs(config)
    meta = {"version": JUDGE_VERSION, "arch": ShapesJudge.__name__, "config": dataclasses.asdict(config),
            "train_data": train_cfg.model_dump(mode="json"), "eval_data": eval_cfg.model_dump(mode="json")}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(meta, sort_keys=True).encode())
    probe = Shapes(train_cfg.replace(train_size=min(8, config.train_size)))
    images, annotations = _render_split(probe, "train")
    h.update(images.numpy().tobytes())
    h.update(json.dumps(annotations, sort_keys=True).encode())
    return h.hexdigest()


def save_judge(judge: ShapesJudge, path: str | Path, *, key: str) -> Path:
    """Write ``judge`` to ``path`` atomically (temp file + rename)."""
    payload = {"version": JUDGE_VERSION, "key": key, "config": dataclasses.asdict(judge.config),
               "info": judge.info, "state_dict": judge.state_dict()}
    return write_payload(payload, path)


def load_judge(path: str | Path) -> ShapesJudge:
    """Load a checkpoint written by :func:`save_judge` (a fresh module, eval mode, CPU).

    ``FileNotFoundError`` naming the path if missing; ``ValueError`` if it is not a judge of this version.
    """
    path = Path(path).expanduser()
    payload = read_payload(path, "shapes judge")
    if payload.get("version") != JUDGE_VERSION or "state_dict" not in payload:
        raise ValueError(f"{path} is not a shapes judge checkpoint of version {JUDGE_VERSION}")
    judge = ShapesJudge(JudgeConfig(**payload["config"]))
    judge.load_state_dict(payload["state_dict"])
    judge.eval()
    judge.requires_grad_(False)
    judge.info = dict(payload.get("info", {}), key=payload.get("key"))
    judge.cache_path = path
    return judge


def load_or_train_judge(
    config: JudgeConfig = JudgeConfig(), cache_dir: str | Path | None = None, *, threads: int | None = 1
) -> ShapesJudge:
    """The judge of ``config``: loaded from ``<cache_dir>/<judge_key(config)>.pt`` if present, else trained
    (with ``threads`` torch threads, see :func:`train_judge`; its accuracy measured) and saved. ``cache_dir``
    defaults to :func:`default_cache_dir`; the result has ``from_cache`` and ``cache_path`` set."""
    key = judge_key(config)
    return load_or_train(cache_path(key, cache_dir, CACHE_DIR), key, load=load_judge,
                         train=lambda: train_judge(config, threads=threads),
                         save=lambda judge, path: save_judge(judge, path, key=key))


def accuracy_table(judge: ShapesJudge) -> str:
    """The measured accuracy as a Markdown table (rows: evaluation sets; columns: categories)."""
    accuracy = judge.info.get("accuracy", {})
    lines = ["| set | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for name, per in accuracy.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]:.3f}" if c in per else "-" for c in CATEGORIES) + " |")
    return "\n".join(lines)


def shapes_judge(image_size: int = 32, cache_dir: str | Path | None = None, *, threads: int | None = 1) -> ShapesJudge:
    """The default judge for ``image_size`` (:func:`load_or_train_judge` of ``JudgeConfig(image_size=...)``)."""
    return load_or_train_judge(JudgeConfig(image_size=image_size), cache_dir=cache_dir, threads=threads)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ntm.eval.shapes_judge [--image-size 32] [--cache-dir DIR] [--threads N]``: train or load the
    default judge, print its measured accuracy."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--image-size", type=int, default=32, choices=(16, 32, 64))
    parser.add_argument("--cache-dir", default=None, help="default: $NTM_CACHE/shapes_judge")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (1: see train_judge)")
    args = parser.parse_args(argv)
    judge = shapes_judge(args.image_size, cache_dir=args.cache_dir, threads=args.threads)
    info = judge.info
    print(f"{judge.cache_path} ({'cached' if judge.from_cache else 'trained'}; training took "
          f"{info.get('train_seconds', float('nan')):.1f} s on {info.get('threads')} threads)")
    print(accuracy_table(judge))
    print("trusted" if judge.trusted else f"NOT trusted: {'; '.join(judge.untrusted())}")


__all__ = [
    "CROP", "EVAL_SETS", "JUDGE_VERSION", "POSITION_CONE", "POSITION_MARGIN", "TRUST_THRESHOLD", "JudgeConfig",
    "JudgeNotTrusted", "ShapesJudge", "accuracy_table", "augment", "connected_components", "contrast_prompt",
    "data_configs", "default_cache_dir", "find_regions", "judge_accuracy", "judge_key", "label_maps", "load_judge",
    "load_or_train_judge", "measure_judge", "named_pairs", "object_crops", "read_back_exact", "relation_holds",
    "save_judge", "score_images", "shapes_judge", "summarise", "train_judge", "verdict",
]


if __name__ == "__main__":
    main()
