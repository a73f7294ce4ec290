"""``shapes``: procedural captioned scenes for text-to-image experiments (the offline counterpart of GenEval).

A scene is 1 to 4 flat objects on a plain dark-grey background
(:data:`BACKGROUND`, RGB ``(30, 30, 30)``), drawn from 6 shapes
(:data:`SHAPES`) x 6 colours (:data:`COLOURS`) x 2 sizes (:data:`SIZES`:
half-extent 0.10 or 0.16 of the image side). Objects never overlap (their
boxes are at least :data:`GAP` apart) and keep :data:`BORDER` from the edges;
centres lie on a ``1 / 256`` grid. Placement is rejection sampling with a
fixed retry budget (64 tries per object, 16 restarts, then a fixed quadrant
layout), position scenes are drawn directly, all from the scene's own
generator seeded by ``(seed, split, index)``. Rendering is anti-aliased: each
pixel is the mean of 4 x 4 point samples of the shape (precomputed per shape,
size and sub-pixel phase), blending its colour over the background, rounded
to uint8.

Every scene belongs to one of GenEval's six categories and carries a caption
from a small grammar (:func:`parse_caption` reads it back)::

    single_object  a circle                                  (colour not named)
    colors         a red circle
    two_object     a circle and a square                     (two shapes, colours not named)
    counting       three yellow circles                      (two, three or four; one colour and shape)
    position       a purple star to the left of an orange square   (left of / right of / above / below)
    color_attr     a green square and a blue triangle        (two shapes, two colours)

and a structured annotation (``Batch.annotation``)::

    {"category": "position", "relation": "left of",           # relation: None outside position
     "objects": [{"shape": "star", "colour": "purple", "size": "small",
                  "centre": [x, y], "bbox": [x0, y0, x1, y1]}, ...]}

Coordinates are fractions of the image side, ``x`` to the right and ``y``
down (so "above" means a smaller ``y``); ``centre`` is the centre of the
object's ``bbox``. In a position scene ``objects[0]`` is the subject and
``objects[1]`` the reference; their boxes are apart along the relation's axis
(``|d_axis| >= h0 + h1 + GAP``) and the displacement along it dominates
(``|d_other| <= |d_axis|``). Generated two-object scenes always use two
different shapes (color_attr: and two different colours).

Compositional hold-out: a fraction ``held_out_fraction`` of the 36
``(colour, shape)`` pairs (:func:`held_out_pairs`, chosen from ``seed``; every
colour keeps at least two shapes and every shape two colours in training)
never appears in a colour-bearing training caption (colors, counting,
position, color_attr); with ``held_out_scope="everywhere"`` (the default) no
training object has such a pair at all. Three splits:

* ``train``: ``train_size`` scenes of seen pairs only;
* ``seen``: ``eval_size`` held-out scenes from the training distribution;
* ``unseen``: ``eval_size`` held-out scenes of the colour-bearing categories
  (weighted as in training; uniformly if none of them is trained on) in which
  at least one object has a held-out pair, and every held-out pair can occur.

``eval_batches`` serves ``config.eval_split`` (``"seen"`` by default);
:meth:`Shapes.split_batches` serves any split. Scene ``i`` of a split is a pure
function of ``(seed, split, i)`` (and of the fields that define the
distribution: weights, hold-out; pixels also of ``image_size``), not of the
split sizes. Scenes are rendered on first use and kept in memory as uint8;
batches are normalised ``x / 255 * 2 - 1``. The training stream is the rule of
:mod:`ntm.data.streams`: seeded epoch permutations of the ``train_size``
scenes, one global batch per step, ranks taking contiguous slices.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from typing import Annotated, Iterator, Literal, Sequence, TypeVar

import pydantic
import torch
from torch import Tensor

from ntm.data.base import DATA_SOURCES, Batch, ComponentConfig, DataError, DataSource, DataSpec
from ntm.data.folder import uint8_to_unit
from ntm.data.streams import EpochPermutations, check_stream_args, derive_seed, rank_positions
from ntm.train.config import FrozenDict

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
"""The shapes, in a fixed order."""
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 190, 60), "blue": (40, 90, 235),
    "yellow": (245, 215, 30), "purple": (150, 60, 210), "orange": (250, 140, 20),
}
"""Colour name -> RGB (uint8), well apart in hue."""
BACKGROUND = (30, 30, 30)
"""The plain background, RGB (uint8): a dark neutral grey, so every colour stands out."""
SIZES = {"small": 0.10, "large": 0.16}
"""Size -> half-extent of the object's box, as a fraction of the image side."""
CATEGORIES = ("single_object", "colors", "two_object", "counting", "position", "color_attr")
"""GenEval's six categories."""
COLOUR_CATEGORIES = ("colors", "counting", "position", "color_attr")
"""The categories whose captions name colours (the compositional hold-out applies to them)."""
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
"""Relation (annotation) -> its words in a caption."""
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
SPLITS = ("train", "seen", "unseen")
GAP = 0.04
"""Least distance between two objects' boxes (fraction of the image side)."""
BORDER = 0.02
"""Least distance between an object's box and the image edge."""
SUPERSAMPLE = 4
"""Anti-aliasing: coverage samples per pixel along each axis."""
GRID = 256
"""Object centres lie on a grid of ``1 / GRID`` of the image side (a whole number of grid steps per pixel
at every image size)."""

Pair = tuple[str, str]
"""``(colour, shape)``."""
T = TypeVar("T")

# -- geometry, in units of the object's half-extent h (x right, y down) ----------------------------------------------
_SQUARE = 0.85  # half-side of the square (a full-size square looks much bigger than the other shapes)
_ARM = 0.36  # half-width of the cross's arms
_STAR_INNER = 0.42  # inner radius of the five-pointed star (outer radius 1)
_STAR_SHIFT = (1 - math.cos(math.pi / 5)) / 2  # moves the star down so that its box is centred
EXTENTS = {
    "circle": (1.0, 1.0), "square": (_SQUARE, _SQUARE), "triangle": (1.0, 1.0),
    "star": (math.sin(2 * math.pi / 5), 1 - _STAR_SHIFT), "diamond": (1.0, 1.0), "cross": (1.0, 1.0),
}
"""Shape -> half-extents ``(x, y)`` of its box in units of ``h`` (all within ``[-1, 1]``)."""


def _star(dx: Tensor, dy: Tensor) -> Tensor:
    """Inside a five-pointed star, apex up: fold the angle into one spike, test against its edge."""
    y = dy - _STAR_SHIFT
    x = dx.expand(torch.broadcast_shapes(dx.shape, y.shape))
    r = torch.sqrt(x * x + y * y)
    sector = 2 * math.pi / 5
    a = torch.remainder(torch.atan2(x, -y), sector)
    phi = torch.minimum(a, sector - a)  # angle from the nearest spike tip
    px, py = r * torch.cos(phi), r * torch.sin(phi)
    ix, iy = _STAR_INNER * math.cos(sector / 2), _STAR_INNER * math.sin(sector / 2)
    return (ix - 1) * py - iy * (px - 1) >= 0  # on the centre's side of the tip -> inner-vertex edge


_INSIDE = {
    "circle": lambda dx, dy: dx * dx + dy * dy <= 1,
    "square": lambda dx, dy: (dx.abs() <= _SQUARE) & (dy.abs() <= _SQUARE),
    "triangle": lambda dx, dy: (dy <= 1) & (dx.abs() <= (dy + 1) / 2),  # apex (0, -1), base y = 1
    "star": _star,
    "diamond": lambda dx, dy: dx.abs() + dy.abs() <= 1,
    "cross": lambda dx, dy: ((dx.abs() <= 1) & (dy.abs() <= _ARM)) | ((dx.abs() <= _ARM) & (dy.abs() <= 1)),
}


@functools.cache
def _templates(size: int) -> tuple[Tensor, int]:
    """Anti-aliased coverage of every shape, size and sub-pixel phase at image side ``size``.

    Returns ``(T, R)``: ``T[shape, size, phase_y, phase_x]`` is the ``(2R + 1, 2R + 1)`` coverage of
    the pixels around the one holding the centre, for a centre ``phase / q`` of a pixel past that
    pixel's corner (``q = GRID // size``), each pixel the mean of ``SUPERSAMPLE x SUPERSAMPLE``
    point samples of the shape.
    """
    q, ss = GRID // size, SUPERSAMPLE
    radius = math.ceil(max(SIZES.values()) * size) + 1
    width = 2 * radius + 1
    samples = (torch.arange(width * ss, dtype=torch.float64) + 0.5) / ss - radius  # pixels from the centre pixel
    offsets = samples[None, :] - torch.arange(q, dtype=torch.float64)[:, None] / q  # (q, width * ss)
    out = torch.empty(len(SHAPES), len(SIZES), q, q, width, width, dtype=torch.float32)
    for j, h in enumerate(SIZES.values()):
        d = offsets / (h * size)  # in units of the half-extent h
        for i, shape in enumerate(SHAPES):
            inside = _INSIDE[shape](d[None, :, None, :], d[:, None, :, None])  # (phase_y, phase_x, y, x)
            out[i, j] = inside.view(q, q, width, ss, width, ss).to(torch.float32).mean(dim=(3, 5))
    return out, radius


def render(annotations: list[dict], image_size: int) -> Tensor:
    """Scenes -> ``(B, 3, image_size, image_size)`` uint8 images over :data:`BACKGROUND`.

    Only each object's ``shape``, ``colour``, ``size`` and ``centre`` are read (centres are snapped
    to the ``1 / GRID`` grid the scenes are drawn on), so an annotation read back from JSON renders
    the identical image. Each pixel blends the background and the object's colour by the object's
    coverage of it (:func:`_templates`); objects do not overlap.
    """
    if image_size not in (16, 32, 64):
        raise DataError(f"shapes: image_size must be 16, 32 or 64, got {image_size}")
    out = torch.empty(len(annotations), 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(annotations), 128):  # small chunks keep the float canvas in cache
        out[start : start + 128] = _render(annotations[start : start + 128], image_size)
    return out


def _render(annotations: list[dict], image_size: int) -> Tensor:
    bg = torch.tensor(BACKGROUND, dtype=torch.float32)
    templates, radius = _templates(image_size)
    width, q = 2 * radius + 1, GRID // image_size
    canvas = torch.zeros(len(annotations), image_size + 2 * radius, image_size + 2 * radius, 3)
    objects = [(b, o) for b, scene in enumerate(annotations) for o in scene["objects"]]
    if objects:
        n = len(objects)
        scene = torch.tensor([b for b, _ in objects])
        kx = torch.tensor([round(o["centre"][0] * GRID) for _, o in objects])
        ky = torch.tensor([round(o["centre"][1] * GRID) for _, o in objects])
        shape = torch.tensor([SHAPES.index(o["shape"]) for _, o in objects])
        size = torch.tensor([list(SIZES).index(o["size"]) for _, o in objects])
        delta = torch.tensor([COLOURS[o["colour"]] for _, o in objects], dtype=torch.float32) - bg  # (n, 3)
        coverage = templates[shape, size, ky % q, kx % q]  # (n, width, width)
        span = torch.arange(width)
        rows = ((ky // q)[:, None] + span)[:, :, None].expand(n, width, width)  # padded canvas: pixel p - R + i
        cols = ((kx // q)[:, None] + span)[:, None, :].expand(n, width, width)
        index = scene[:, None, None].expand(n, width, width)
        canvas.index_put_((index, rows, cols), coverage[..., None] * delta[:, None, None, :], accumulate=True)
    img = canvas[:, radius : radius + image_size, radius : radius + image_size].permute(0, 3, 1, 2) + bg[:, None, None]
    return img.round_().clamp_(0, 255).to(torch.uint8)


# -- captions -----------------------------------------------------------------------------------------------------
def _noun_phrase(obj: dict, coloured: bool) -> str:
    words = [obj["colour"], obj["shape"]] if coloured else [obj["shape"]]
    return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


def caption_of(scene: dict) -> str:
    """The caption of an annotation or of a parsed prompt (only category, shapes, colours, relation are read)."""
    category, objs = scene.get("category"), scene.get("objects") or []
    expected = {"single_object": (1,), "colors": (1,), "two_object": (2,), "counting": tuple(COUNT_WORDS),
                "position": (2,), "color_attr": (2,)}
    if category not in expected:
        raise DataError(f"shapes: unknown category {category!r}; categories: {', '.join(CATEGORIES)}")
    if len(objs) not in expected[category]:
        raise DataError(f"shapes: a {category} scene has {'/'.join(map(str, expected[category]))} objects, "
                        f"got {len(objs)}")
    if category == "single_object":
        return _noun_phrase(objs[0], False)
    if category == "colors":
        return _noun_phrase(objs[0], True)
    if category == "two_object":
        return f"{_noun_phrase(objs[0], False)} and {_noun_phrase(objs[1], False)}"
    if category == "counting":
        return f"{COUNT_WORDS[len(objs)]} {objs[0]['colour']} {PLURALS[objs[0]['shape']]}"
    if category == "position":
        relation = scene.get("relation")
        if relation not in RELATIONS:
            raise DataError(f"shapes: unknown relation {relation!r}; relations: {', '.join(RELATIONS)}")
        return f"{_noun_phrase(objs[0], True)} {RELATIONS[relation]} {_noun_phrase(objs[1], True)}"
    return f"{_noun_phrase(objs[0], True)} and {_noun_phrase(objs[1], True)}"


def prompt_of(annotation: dict) -> dict:
    """What a caption says about a scene: ``{"category", "objects": [{"shape", "colour"}], "relation"}``.

    Sizes and positions are dropped, and colours too in the categories whose captions do not name them
    (``colour`` is ``None`` there). :func:`parse_caption` of the scene's caption returns exactly this.
    """
    coloured = annotation["category"] in COLOUR_CATEGORIES
    return {
        "category": annotation["category"],
        "objects": [{"shape": o["shape"], "colour": o["colour"] if coloured else None} for o in annotation["objects"]],
        "relation": annotation.get("relation"),
    }


_FORMS = ("'a circle', 'a red circle', 'a circle and a square', 'three red circles', "
          "'a red circle to the left of a blue square' (right of, above, below), 'a red circle and a blue square'")
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
_NUMBERS = {word: n for n, word in COUNT_WORDS.items()}
_RELATION_WORDS = {tuple(words.split()): relation for relation, words in RELATIONS.items()}


def parse_caption(caption: str) -> dict:
    """A caption of the shapes grammar -> its structured prompt (the form of :func:`prompt_of`).

    Case, surrounding spaces, repeated spaces and a final full stop are ignored; ``a`` and ``an`` are
    interchangeable. Anything else outside the grammar raises :class:`DataError` with one line saying
    where it fails.
    """
    words = caption.strip().rstrip(".").lower().split()

    def fail(reason: str) -> DataError:
        return DataError(f"shapes: caption {caption!r} is outside the grammar ({reason}); forms: {_FORMS}")

    def word(i: int) -> str:
        return repr(words[i]) if i < len(words) else "the end"

    def phrase(i: int) -> tuple[str | None, str, int]:
        if i >= len(words) or words[i] not in ("a", "an"):
            raise fail(f"expected 'a' or 'an' at word {i + 1}, got {word(i)}")
        i += 1
        colour = None
        if i < len(words) and words[i] in COLOURS:
            colour, i = words[i], i + 1
        if i >= len(words) or words[i] not in SHAPES:
            raise fail(f"expected a shape ({', '.join(SHAPES)}) at word {i + 1}, got {word(i)}")
        return colour, words[i], i + 1

    def obj(colour: str | None, shape: str) -> dict:
        return {"shape": shape, "colour": colour}

    if not words:
        raise fail("it is empty")
    if words[0] in _NUMBERS:
        if len(words) != 3 or words[1] not in COLOURS or words[2] not in _SINGULAR:
            raise fail("a count is followed by a colour and a plural shape, e.g. 'three red circles'")
        return {"category": "counting", "objects": [obj(words[1], _SINGULAR[words[2]])] * _NUMBERS[words[0]],
                "relation": None}
    c1, s1, i = phrase(0)
    if i == len(words):
        return {"category": "colors" if c1 else "single_object", "objects": [obj(c1, s1)], "relation": None}
    relation = None
    if words[i] == "and":
        i += 1
    else:
        for rel_words, rel in _RELATION_WORDS.items():
            if tuple(words[i : i + len(rel_words)]) == rel_words:
                relation, i = rel, i + len(rel_words)
                break
        else:
            raise fail(f"expected 'and' or a relation ({', '.join(RELATIONS.values())}) at word {i + 1}, got {word(i)}")
    c2, s2, i = phrase(i)
    if i != len(words):
        raise fail(f"unexpected {word(i)} at word {i + 1}")
    if relation is not None:
        if c1 is None or c2 is None:
            raise fail("a position caption names both objects' colours")
        category = "position"
    elif (c1 is None) != (c2 is None):
        raise fail("name the colours of both objects or of neither")
    else:
        category = "two_object" if c1 is None else "color_attr"
    return {"category": category, "objects": [obj(c1, s1), obj(c2, s2)], "relation": relation}


# -- config and hold-out ------------------------------------------------------------------------------------------
def _category_weights(value: dict[str, float]) -> FrozenDict:
    unknown = [k for k in value if k not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; "
                         f"categories: {', '.join(CATEGORIES)}")
    bad = {k: v for k, v in value.items() if not 0 <= v < math.inf}
    if bad:
        raise ValueError(f"weights must be finite and >= 0, got {', '.join(f'{k}={v}' for k, v in bad.items())}")
    if not any(v > 0 for v in value.values()):
        raise ValueError("at least one category needs a weight > 0")
    return FrozenDict(value)


class ShapesConfig(ComponentConfig):
    seed: int = 0
    """Seed of the scenes, the held-out pairs and the splits (the training order is seeded by the run's seed)."""
    image_size: Literal[16, 32, 64] = 32
    """Side of the square RGB images: 16, 32 or 64."""
    train_size: int = pydantic.Field(20000, ge=1)
    """Training scenes (rendered on first use, kept in memory as uint8: 3 * S * S bytes each, 61 MB for 20000
    at 32 pixels)."""
    eval_size: int = pydantic.Field(1000, ge=1)
    """Scenes in each held-out split (seen and unseen)."""
    category_weights: Annotated[dict[str, float], pydantic.AfterValidator(_category_weights)] = FrozenDict(
        {c: 1.0 for c in CATEGORIES})
    """Relative weight per category (0: never drawn), e.g. --data.category-weights.counting 2; in Python or
    config.json a category missing from the mapping weighs 0."""
    held_out_fraction: float = pydantic.Field(0.2, ge=0.0, le=0.5)
    """Fraction of the 36 (colour, shape) pairs kept out of the colour-bearing training captions (0 to 0.5)."""
    held_out_scope: Literal["everywhere", "captions"] = "everywhere"
    """'everywhere': no training object has a held-out pair; 'captions': only the colour-bearing captions avoid
    them (single_object / two_object scenes, whose captions name no colour, may show them)."""
    eval_split: Literal["seen", "unseen"] = "seen"
    """Held-out split that eval_batches serves: scenes of seen pairs, or of held-out (unseen) pairs."""

    @pydantic.field_validator("eval_split")
    @classmethod
    def _unseen_needs_pairs(cls, value: str, info: pydantic.ValidationInfo) -> str:
        if value == "unseen" and info.data.get("held_out_fraction", 1.0) == 0:
            raise ValueError("the unseen split needs held-out pairs: set held_out_fraction > 0")
        return value

    def build(self) -> "Shapes":
        return Shapes(self)


def held_out_pairs(config: ShapesConfig) -> list[Pair]:
    """The ``(colour, shape)`` pairs held out of training, sorted; a pure function of ``seed`` and the fraction.

    ``round(held_out_fraction * 36)`` pairs (at least one when the fraction is > 0), taken greedily from
    a permutation seeded by ``seed``, skipping a pair that would leave its colour with fewer than two
    shapes or its shape with fewer than two colours in training.
    """
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    target = round(config.held_out_fraction * len(pairs))
    if config.held_out_fraction > 0:
        target = max(target, 1)
    order = list(pairs)
    random.Random(derive_seed("shapes/held-out", config.seed)).shuffle(order)
    shapes_left = {c: len(SHAPES) for c in COLOURS}
    colours_left = {s: len(COLOURS) for s in SHAPES}
    chosen: list[Pair] = []
    for colour, shape in order:
        if len(chosen) == target:
            break
        if shapes_left[colour] > 2 and colours_left[shape] > 2:
            chosen.append((colour, shape))
            shapes_left[colour] -= 1
            colours_left[shape] -= 1
    if len(chosen) < target:  # not reached for fractions <= 0.5, kept as a guard
        raise DataError(f"shapes: held_out_fraction={config.held_out_fraction} cannot hold out {target} pairs "
                        "while every colour and shape keeps two partners in training; lower it")
    return sorted(chosen)


# -- scenes --------------------------------------------------------------------------------------------------------
class _Pools:
    """What each split draws from: single pairs and ordered two-object combinations, per category."""

    def __init__(self, config: ShapesConfig, held: list[Pair]) -> None:
        all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
        held_set = set(held)
        seen = [p for p in all_pairs if p not in held_set]
        plain = seen if config.held_out_scope == "everywhere" else all_pairs

        def combos(a: list[Pair], b: list[Pair], distinct_colours: bool, need_held: bool) -> list[tuple[Pair, Pair]]:
            return [(p, q) for p in a for q in b if p[1] != q[1] and (not distinct_colours or p[0] != q[0])
                    and (not need_held or p in held_set or q in held_set)]

        self.single = {"train": {"single_object": plain, "colors": seen, "counting": seen}}
        self.double = {"train": {"two_object": combos(plain, plain, False, False),
                                 "position": combos(seen, seen, False, False),
                                 "color_attr": combos(seen, seen, True, False)}}
        self.single["unseen"] = {"colors": held, "counting": held}
        self.double["unseen"] = {"position": combos(all_pairs, all_pairs, False, True),
                                 "color_attr": combos(all_pairs, all_pairs, True, True)}
        weights = {c: float(config.category_weights.get(c, 0.0)) for c in CATEGORIES}
        unseen = {c: weights[c] for c in COLOUR_CATEGORIES}
        if not any(unseen.values()):  # no colour-bearing category is trained on: evaluate them all equally
            unseen = dict.fromkeys(COLOUR_CATEGORIES, 1.0)
        self.weights = {"train": weights, "unseen": unseen}
        self.categories = {k: [c for c in CATEGORIES if w.get(c, 0) > 0] for k, w in self.weights.items()}
        self.cumulative = {k: list(itertools.accumulate(self.weights[k][c] for c in cs))
                           for k, cs in self.categories.items()}
        for split in ("train", "unseen") if held else ("train",):  # no held-out pairs: the unseen split refuses
            for category, pool in [*self.single[split].items(), *self.double[split].items()]:
                if not pool and self.weights[split].get(category, 0) > 0:
                    raise DataError(f"shapes: no {category} scene is possible in the {split} split with "
                                    f"held_out_fraction={config.held_out_fraction}")

    def draw(self, split: str, rng: random.Random) -> dict:
        """One scene's content: category, (colour, shape) per object, relation."""
        kind = "unseen" if split == "unseen" else "train"
        cumulative = self.cumulative[kind]
        category = self.categories[kind][min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]),
                                             len(cumulative) - 1)]
        relation = None
        if category in ("single_object", "colors"):
            pairs = [_pick(rng, self.single[kind][category])]
        elif category == "counting":
            pairs = [_pick(rng, self.single[kind][category])] * _pick(rng, tuple(COUNT_WORDS))
        else:
            pairs = list(_pick(rng, self.double[kind][category]))
            if category == "position":
                relation = _pick(rng, tuple(RELATIONS))
        return {"category": category, "pairs": pairs, "relation": relation}


_TRIES = 64  # placements tried per object before the scene restarts
_RESTARTS = 16  # scene restarts before the grid layout


def _int(rng: random.Random, lo: int, hi: int) -> int:
    """Uniform on ``lo .. hi`` (one ``random()`` draw: cheaper than ``randint``, as reproducible)."""
    return lo + int(rng.random() * (hi - lo + 1))


def _pick(rng: random.Random, seq: Sequence[T]) -> T:
    """A uniform element of ``seq``."""
    return seq[int(rng.random() * len(seq))]


@functools.cache
def _span(h: float) -> tuple[int, int]:
    """Grid coordinates (whole ``1 / GRID`` steps) that keep a box of half-extent ``h`` BORDER inside the image."""
    return math.ceil((BORDER + h) * GRID), math.floor((1 - BORDER - h) * GRID)


def _uniform(rng: random.Random, h: float) -> float:
    return _int(rng, *_span(h)) / GRID


def _apart(a: tuple[float, float], ha: float, b: tuple[float, float], hb: float) -> bool:
    reach = ha + hb + GAP
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _place(rng: random.Random, halves: list[float]) -> list[tuple[float, float]]:
    """Non-overlapping centres inside the image for boxes of half-extents ``halves``."""
    for _ in range(_RESTARTS):
        placed: list[tuple[float, float]] = []
        for h in halves:
            for _ in range(_TRIES):
                c = (_uniform(rng, h), _uniform(rng, h))
                if all(_apart(c, h, p, hp) for p, hp in zip(placed, halves)):
                    placed.append(c)
                    break
            else:
                break
        if len(placed) == len(halves):
            return placed
    cells = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]  # a box of <= 0.16 fits each quadrant
    rng.shuffle(cells)
    return cells[: len(halves)]


def _place_relation(rng: random.Random, ha: float, hb: float, relation: str) -> list[tuple[float, float]]:
    """Centres of a subject (half-extent ``ha``) and a reference (``hb``) standing in ``relation``.

    Along the relation's axis the centres are at least ``d = ha + hb + GAP`` apart (the boxes do not
    meet along it), across it at most ``d`` (the relation's axis dominates). Drawn directly, without
    rejection: along the axis the lower object first, then the upper one at least ``d`` beyond it;
    across the axis the subject anywhere, then the reference within the axis distance of it.
    """
    axis = 0 if relation in ("left of", "right of") else 1
    low_is_subject = relation in ("left of", "above")
    h_low, h_high = (ha, hb) if low_is_subject else (hb, ha)
    reach = math.ceil((ha + hb + GAP) * GRID)
    lo_low, (lo_high, hi_high) = _span(h_low)[0], _span(h_high)
    # even two large boxes leave 0.28 of the side for the lower one's coordinate
    low = _int(rng, lo_low, min(_span(h_low)[1], hi_high - reach))
    high = _int(rng, max(lo_high, low + reach), hi_high)
    along = (low, high) if low_is_subject else (high, low)  # (subject, reference)
    lo_a, hi_a = _span(ha)
    lo_b, hi_b = _span(hb)
    across_a = _int(rng, lo_a, hi_a)
    across_b = _int(rng, max(lo_b, across_a - (high - low)), min(hi_b, across_a + (high - low)))
    if axis == 0:
        return [(along[0] / GRID, across_a / GRID), (along[1] / GRID, across_b / GRID)]
    return [(across_a / GRID, along[0] / GRID), (across_b / GRID, along[1] / GRID)]


def _object(colour: str, shape: str, size: str, centre: tuple[float, float]) -> dict:
    h = SIZES[size]
    ex, ey = EXTENTS[shape]
    x, y = centre
    bbox = [round(x - ex * h, 4), round(y - ey * h, 4), round(x + ex * h, 4), round(y + ey * h, 4)]
    return {"shape": shape, "colour": colour, "size": size, "centre": [x, y], "bbox": bbox}


def _copy(annotation: dict) -> dict:
    """A fresh copy (cheaper than ``copy.deepcopy``), so callers cannot alter the cache."""
    return {"category": annotation["category"], "relation": annotation["relation"],
            "objects": [{**o, "centre": list(o["centre"]), "bbox": list(o["bbox"])} for o in annotation["objects"]]}


class _Split:
    """One split's rendered scenes, filled on first use: uint8 images and annotations."""

    def __init__(self, size: int, image_size: int) -> None:
        self.size = size
        self.image_size = image_size
        self.images: Tensor | None = None
        self.annotations: list[dict | None] = [None] * size


@DATA_SOURCES.register("shapes", ShapesConfig)
class Shapes(DataSource):
    """``x (B, 3, S, S)`` float32 in ``[-1, 1]``, ``label`` None, ``caption`` and ``annotation`` per scene.

    ``held_out`` is :func:`held_out_pairs` of the config. :meth:`annotation` / :meth:`examples` give any
    scene of any split by index; :meth:`split_batches` passes over a split in order.
    """

    def __init__(self, config: ShapesConfig) -> None:
        self.config = config
        s = config.image_size
        self.spec = DataSpec(shape=(3, s, s), num_classes=0, kind="images")
        self.held_out = held_out_pairs(config)
        self._pools = _Pools(config, self.held_out)
        sizes = {"train": config.train_size, "seen": config.eval_size, "unseen": config.eval_size}
        self._splits = {name: _Split(n, s) for name, n in sizes.items()}

    # -- scenes ---------------------------------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        """Scenes kept for ``split`` (``train_size`` or ``eval_size``)."""
        return self._split(split).size

    def _split(self, split: str) -> _Split:
        if split not in self._splits:
            raise DataError(f"shapes: unknown split {split!r}; splits: {', '.join(SPLITS)}")
        if split == "unseen" and not self.held_out:
            raise DataError("shapes: the unseen split needs held-out pairs: set held_out_fraction > 0")
        return self._splits[split]

    def annotation(self, split: str, index: int) -> dict:
        """Scene ``index`` of ``split`` (any index >= 0): a pure function of ``(seed, split, index)``."""
        self._split(split)
        if index < 0:
            raise DataError(f"shapes: scene index must be >= 0, got {index}")
        rng = random.Random(derive_seed("shapes/scene", self.config.seed, split, index))
        content = self._pools.draw(split, rng)
        sizes = [_pick(rng, tuple(SIZES)) for _ in content["pairs"]]
        halves = [SIZES[z] for z in sizes]
        if content["relation"] is None:
            centres = _place(rng, halves)
        else:
            centres = _place_relation(rng, *halves, content["relation"])
        objects = [_object(c, s, z, xy) for (c, s), z, xy in zip(content["pairs"], sizes, centres)]
        return {"category": content["category"], "relation": content["relation"], "objects": objects}

    def examples(self, split: str, indices: list[int] | Tensor) -> Batch:
        """Scenes ``indices`` of ``split`` as one batch (the first ``num_examples(split)`` are cached)."""
        images, annotations = self._get(split, indices.tolist() if isinstance(indices, Tensor) else list(indices))
        return Batch(x=uint8_to_unit(images), label=None, caption=[caption_of(a) for a in annotations],
                     annotation=annotations)

    def _fill(self, split: str, indices: list[int]) -> dict[int, tuple[dict, Tensor]]:
        """Draw and render the scenes of ``indices`` not cached yet; cache those below the split's size.

        Returns the scenes beyond the cached range: index -> (annotation, uint8 image).
        """
        cache = self._split(split)
        todo = [i for i in dict.fromkeys(indices) if i >= cache.size or cache.annotations[i] is None]
        beyond: dict[int, tuple[dict, Tensor]] = {}
        for start in range(0, len(todo), 1024):
            chunk = todo[start : start + 1024]
            annotations = [self.annotation(split, i) for i in chunk]
            images = render(annotations, cache.image_size)
            kept = [r for r, i in enumerate(chunk) if i < cache.size]
            if kept:
                if cache.images is None:
                    s = cache.image_size
                    cache.images = torch.empty(cache.size, 3, s, s, dtype=torch.uint8)
                cache.images[torch.tensor([chunk[r] for r in kept])] = images[torch.tensor(kept)]
                for r in kept:
                    cache.annotations[chunk[r]] = annotations[r]
            beyond.update({i: (annotations[r], images[r]) for r, i in enumerate(chunk) if i >= cache.size})
        return beyond

    def _get(self, split: str, indices: list[int]) -> tuple[Tensor, list[dict]]:
        cache = self._split(split)
        beyond = self._fill(split, indices)
        s = cache.image_size
        out = torch.empty(len(indices), 3, s, s, dtype=torch.uint8)
        cached = [j for j, i in enumerate(indices) if i < cache.size]
        if cached:
            assert cache.images is not None
            out[torch.tensor(cached)] = cache.images[torch.tensor([indices[j] for j in cached])]
        for j, i in enumerate(indices):
            if i >= cache.size:
                out[j] = beyond[i][1]
        annotations = [_copy(cache.annotations[i] or {} if i < cache.size else beyond[i][0]) for i in indices]
        return out, annotations

    def prerender(self, split: str = "train") -> None:
        """Render every kept scene of ``split`` now (otherwise each is rendered the first time it is used)."""
        self._fill(split, list(range(self.num_examples(split))))

    # -- the DataSource interface -------------------------------------------------------------------------------
    def train_batches(
        self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Endless batches of training scenes from ``start_step`` on (seeded epochs, contiguous rank slices)."""
        check_stream_args(batch_size, start_step, rank, world_size)
        perms = EpochPermutations(self.config.train_size, seed, tag="shapes/train")
        step = start_step
        while True:
            yield self.examples("train", perms.indices(rank_positions(step, batch_size, rank, world_size)))
            step += 1

    def split_batches(self, split: str, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """One in-order pass over the kept scenes of ``split`` (the last batch may be short)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = self.num_examples(split)
        total = size if max_examples is None else min(size, max(0, max_examples))
        for start in range(0, total, batch_size):
            yield self.examples(split, list(range(start, min(start + batch_size, total))))

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """The held-out split ``config.eval_split`` (``"seen"`` by default) in its fixed order."""
        return self.split_batches(self.config.eval_split, batch_size, max_examples=max_examples)

    def stats(self) -> dict:
        return {"normalisation": "x / 255 * 2 - 1", "pixel_max": 255, "range": [-1.0, 1.0],
                "background": list(BACKGROUND), "held_out_pairs": [list(p) for p in self.held_out],
                "eval_split": self.config.eval_split}

    def to_display(self, x: Tensor) -> Tensor:
        """``[-1, 1]`` -> ``[0, 1]``, same shape."""
        return ((x + 1) / 2).clamp(0, 1)


__all__ = [
    "BACKGROUND", "CATEGORIES", "COLOURS", "COLOUR_CATEGORIES", "COUNT_WORDS", "RELATIONS", "SHAPES", "SIZES",
    "Shapes", "ShapesConfig", "caption_of", "held_out_pairs", "parse_caption", "prompt_of", "render",
]
