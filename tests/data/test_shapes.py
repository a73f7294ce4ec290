"""data:shapes: determinism, rendering, the caption grammar, geometry, the compositional hold-out, streams, shards."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pydantic
import pytest
import torch

from ntm.experiments.cli import main
from ntm import testing
from ntm.data import DATA_SOURCES, DataError, ShapesConfig, WebDatasetConfig
from ntm.data.shapes import (
    BACKGROUND, CATEGORIES, COLOUR_CATEGORIES, COLOURS, COUNT_WORDS, SHAPES, caption_of, held_out_pairs,
    parse_caption, prompt_of, render,
)
from ntm.registry.cli import config_error

SMALL = {"image_size": 16, "train_size": 40, "eval_size": 24}
"""A source that renders in milliseconds."""


def scenes(source, split: str, n: int) -> list[dict]:
    """Annotations of scenes 0 .. n - 1 of ``split`` (drawn, not rendered)."""
    return [source.annotation(split, i) for i in range(n)]


def pairs(annotation: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in annotation["objects"]}


@pytest.fixture(scope="module")
def source():
    return ShapesConfig(train_size=64, eval_size=32).build()


# -- scenes and pixels ----------------------------------------------------------------------------------------------
def test_scenes_are_pure_functions_of_seed_split_and_index(source):
    again = ShapesConfig(train_size=5000, eval_size=7).build()  # the split sizes do not change scene i
    a, b = source.examples("train", [3, 0, 7, 3]), again.examples("train", [3, 0, 7, 3])
    assert torch.equal(a.x, b.x) and a.caption == b.caption and a.annotation == b.annotation
    assert torch.equal(a.x[0], a.x[3]) and not torch.equal(a.x[0], a.x[1])
    assert source.annotation("seen", 2) == again.annotation("seen", 2) != source.annotation("train", 2)
    beyond = source.examples("train", [100])  # past the kept scenes: still a pure function, not cached
    assert beyond.annotation == again.examples("train", [100]).annotation
    other = ShapesConfig(seed=1, train_size=64).build().examples("train", [0, 1, 2, 3])
    assert not torch.equal(other.x, a.x[:4]) and other.caption != a.caption[:4]
    a.annotation[0]["objects"].clear()  # callers get copies: the cache is untouched
    assert source.examples("train", [3]).annotation == b.annotation[:1]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_images_shape_range_and_background(size):
    src = ShapesConfig(**{**SMALL, "image_size": size}).build()
    batch = next(src.train_batches(6, seed=0))
    assert src.spec.shape == (3, size, size) and src.spec.num_classes == 0 and src.spec.kind == "images"
    assert batch.x.shape == (6, 3, size, size) and batch.x.dtype == torch.float32
    assert batch.x.min() >= -1 and batch.x.max() <= 1 and batch.label is None
    assert len(batch.caption) == len(batch.annotation) == 6
    display = src.to_display(batch.x)
    assert display.shape == batch.x.shape and display.min() >= 0 and display.max() <= 1
    pixels = torch.round(display * 255).to(torch.uint8)
    corner = pixels[:, :, 0, 0]  # objects keep BORDER from the edges, so corners show the background
    assert (corner == torch.tensor(BACKGROUND, dtype=torch.uint8)).all()
    json.dumps(src.stats())


def test_objects_are_drawn_in_their_colour_without_overlapping():
    src = ShapesConfig(image_size=64, train_size=48).build()
    batch = src.examples("train", list(range(48)))
    pixels = torch.round(src.to_display(batch.x) * 255).to(torch.uint8)
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None, None]
    for image, annotation in zip(pixels, batch.annotation):
        alone = render([{"objects": [o]} for o in annotation["objects"]], 64)
        footprints = (alone != bg).any(dim=1)  # (objects, H, W): where each object alone changes a pixel
        assert footprints.sum(0).max() <= 1, "two objects share a pixel"
        assert torch.equal(alone.to(torch.int64).sum(0) - bg.to(torch.int64) * (len(alone) - 1), image.to(torch.int64))
        for obj in annotation["objects"]:
            col, row = (int(c * 64) for c in obj["centre"])
            assert tuple(image[:, row, col].tolist()) == COLOURS[obj["colour"]]


def test_annotations_render_back_from_json(source):
    batch = source.examples("seen", list(range(8)))
    again = render(json.loads(json.dumps(batch.annotation)), 32)
    assert torch.equal(again, torch.round(source.to_display(batch.x) * 255).to(torch.uint8))


def test_prerender_matches_rendering_on_demand():
    lazy, eager = ShapesConfig(**SMALL).build(), ShapesConfig(**SMALL).build()
    eager.prerender("train")
    idx = [5, 39, 0, 17]
    assert torch.equal(lazy.examples("train", idx).x, eager.examples("train", idx).x)


# -- captions, categories, geometry ---------------------------------------------------------------------------------
def test_every_category_appears_and_captions_parse_back(source):
    for split, expected in (("train", set(CATEGORIES)), ("unseen", set(COLOUR_CATEGORIES))):
        annotations = scenes(source, split, 300)
        assert {a["category"] for a in annotations} == expected
        for annotation in annotations:
            caption = caption_of(annotation)
            assert parse_caption(caption) == prompt_of(annotation), caption
    batch = source.examples("train", list(range(16)))
    assert batch.caption == [caption_of(a) for a in batch.annotation]


def test_caption_grammar_examples():
    assert caption_of(parse_caption("a purple star to the left of an orange square")) == \
        "a purple star to the left of an orange square"
    assert parse_caption("  Three YELLOW circles. ") == {
        "category": "counting", "relation": None, "objects": [{"shape": "circle", "colour": "yellow"}] * 3}
    assert parse_caption("an red cross below a blue diamond")["relation"] == "below"  # a / an interchangeable
    assert parse_caption("a circle and a square")["category"] == "two_object"
    assert parse_caption("a green square and a blue triangle")["category"] == "color_attr"
    assert parse_caption("a red circle")["category"] == "colors"
    assert parse_caption("a circle") == {"category": "single_object", "relation": None,
                                         "objects": [{"shape": "circle", "colour": None}]}


@pytest.mark.parametrize("caption", [
    "", "a red", "a blob", "red circle", "three circles", "two red circle", "five red circles",
    "a red circle and a square", "a circle to the left of a square", "a red circle near a blue square",
    "a red circle and a blue square please", "a circle and",
])
def test_captions_outside_the_grammar_are_one_line_errors(caption):
    with pytest.raises(DataError, match="outside the grammar") as info:
        parse_caption(caption)
    assert "\n" not in str(info.value) and repr(caption) in str(info.value)


def test_counting_scenes_hold_that_many_identical_objects(source):
    counting = [a for a in scenes(source, "train", 400) if a["category"] == "counting"]
    assert {len(a["objects"]) for a in counting} == set(COUNT_WORDS)
    for a in counting:
        assert caption_of(a).split()[0] == COUNT_WORDS[len(a["objects"])]
        assert len(pairs(a)) == 1


def test_position_relations_hold_on_the_centres(source):
    position = [a for s in ("train", "unseen") for a in scenes(source, s, 400) if a["category"] == "position"]
    assert {a["relation"] for a in position} == {"left of", "right of", "above", "below"}
    for a in position:
        (sx, sy), (rx, ry) = a["objects"][0]["centre"], a["objects"][1]["centre"]
        sub, ref = a["objects"][0]["bbox"], a["objects"][1]["bbox"]
        d, across, apart = {
            "left of": (rx - sx, sy - ry, sub[2] < ref[0]), "right of": (sx - rx, sy - ry, ref[2] < sub[0]),
            "above": (ry - sy, sx - rx, sub[3] < ref[1]), "below": (sy - ry, sx - rx, ref[3] < sub[1]),
        }[a["relation"]]
        assert d > 0.2 and abs(across) <= d and apart, a


def test_objects_stay_inside_and_apart(source):
    for a in scenes(source, "train", 400) + scenes(source, "unseen", 100):
        assert 1 <= len(a["objects"]) <= 4
        for o in a["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 < x0 < o["centre"][0] < x1 < 1 and 0 < y0 < o["centre"][1] < y1 < 1
        for p, q in itertools.combinations(a["objects"], 2):
            (px0, py0, px1, py1), (qx0, qy0, qx1, qy1) = p["bbox"], q["bbox"]
            assert px1 < qx0 or qx1 < px0 or py1 < qy0 or qy1 < py0, a


def test_category_weights():
    src = ShapesConfig(category_weights={"counting": 1, "position": 3}).build()
    counts = Counter(a["category"] for a in scenes(src, "train", 400))
    assert set(counts) == {"counting", "position"} and counts["position"] > 2 * counts["counting"]
    colourless = ShapesConfig(category_weights={"single_object": 1}).build()
    assert {a["category"] for a in scenes(colourless, "unseen", 200)} == set(COLOUR_CATEGORIES)


# -- the compositional hold-out -------------------------------------------------------------------------------------
def test_held_out_pairs_never_appear_in_training():
    config = ShapesConfig()
    held = set(held_out_pairs(config))
    assert len(held) == round(0.2 * 36) and held == set(config.build().held_out)
    seen = {(c, s) for c in COLOURS for s in SHAPES} - held
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    assert held_out_pairs(ShapesConfig(seed=1)) != sorted(held)
    src = config.build()
    for split in ("train", "seen"):
        for a in scenes(src, split, 600):
            assert not pairs(a) & held, (split, a)  # held_out_scope="everywhere": not even uncaptioned
    unseen = scenes(src, "unseen", 400)
    assert all(pairs(a) & held for a in unseen)
    assert set().union(*(pairs(a) & held for a in unseen)) == held  # every held-out pair is evaluated


def test_held_out_scope_captions_only_keeps_them_out_of_coloured_captions():
    src = ShapesConfig(held_out_scope="captions").build()
    held = set(src.held_out)
    shown = set()
    for a in scenes(src, "train", 800):
        if a["category"] in COLOUR_CATEGORIES:
            assert not pairs(a) & held, a
        else:
            shown |= pairs(a) & held
    assert shown, "single_object / two_object scenes may show held-out pairs under held_out_scope='captions'"


def test_eval_split_selects_the_held_out_split():
    seen, unseen = ShapesConfig(**SMALL).build(), ShapesConfig(**SMALL, eval_split="unseen").build()
    a, b = next(seen.eval_batches(24)), next(unseen.eval_batches(24))
    assert a.annotation == next(seen.split_batches("seen", 24)).annotation
    assert b.annotation == next(seen.split_batches("unseen", 24)).annotation
    held = set(seen.held_out)
    assert all(pairs(x) & held for x in b.annotation) and not any(pairs(x) & held for x in a.annotation)
    assert sum(len(x.caption) for x in unseen.eval_batches(10, max_examples=15)) == 15
    none = ShapesConfig(**SMALL, held_out_fraction=0).build()
    assert none.held_out == []
    with pytest.raises(DataError, match="held_out_fraction > 0"):
        next(none.split_batches("unseen", 4))


# -- the DataSource contract ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [SMALL, {**SMALL, "eval_split": "unseen", "image_size": 32}])
def test_meets_the_data_source_contract(fields):
    config = ShapesConfig(**fields)
    assert DATA_SOURCES.name_of(config) == "shapes"
    testing.check_data_source(config)


def test_resuming_and_ranks_keep_captions_and_annotations_aligned():
    src = ShapesConfig(**SMALL).build()
    fresh = list(itertools.islice(src.train_batches(8, seed=3), 6))  # past one epoch of 40
    resumed = next(src.train_batches(8, seed=3, start_step=4))
    assert torch.equal(resumed.x, fresh[4].x) and resumed.caption == fresh[4].caption
    assert resumed.annotation == fresh[4].annotation
    ranks = [next(src.train_batches(4, seed=3, start_step=4, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat([r.x for r in ranks]), fresh[4].x)
    assert ranks[0].caption + ranks[1].caption == fresh[4].caption
    assert ranks[0].annotation + ranks[1].annotation == fresh[4].annotation
    epoch = [c for b in fresh[:5] for c in b.annotation]
    assert sorted(map(json.dumps, epoch)) == sorted(json.dumps(src.annotation("train", i)) for i in range(40))


@pytest.mark.parametrize("fields, field", [
    ({"image_size": 24}, "image_size"),
    ({"train_size": 0}, "train_size"),
    ({"held_out_fraction": 0.7}, "held_out_fraction"),
    ({"held_out_scope": "nowhere"}, "held_out_scope"),
    ({"category_weights": {"colour": 1.0}}, "category_weights"),
    ({"category_weights": {"colors": -1.0}}, "category_weights"),
    ({"category_weights": {"colors": 0.0}}, "category_weights"),
    ({"eval_split": "unseen", "held_out_fraction": 0.0}, "eval_split"),
])
def test_bad_config_is_a_one_line_error_naming_the_field(fields, field):
    with pytest.raises(pydantic.ValidationError) as info:
        ShapesConfig(**fields)
    message = str(config_error(info.value))
    assert "\n" not in message and message.startswith(f"{field}: "), message


# -- shards ---------------------------------------------------------------------------------------------------------
def test_shards_written_from_the_source_read_back_with_captions_and_annotations(tmp_path, capsys):
    out = str(tmp_path / "s" / "train-%06d.tar")
    options = ["--source-options", "image_size=16", "train_size=40"]
    assert main(["shards", "write", "--source", "shapes", "--count", "12", "--maxcount", "5", "--out", out,
                 *options]) == 0, capsys.readouterr().err
    assert "wrote 12 samples from shapes (train)" in capsys.readouterr().out
    urls = str(tmp_path / "s" / "train-{000000..000002}.tar")
    reader = WebDatasetConfig(urls=urls, eval_urls=urls, image_size=16).build()
    back = list(reader.eval_batches(5))
    expected = next(ShapesConfig(image_size=16, train_size=40).build().train_batches(12, seed=0))
    assert sum(b.x.shape[0] for b in back) == 12
    assert [c for b in back for c in b.caption] == expected.caption
    assert [a for b in back for a in b.annotation] == expected.annotation
    assert torch.equal(torch.cat([b.x for b in back]), expected.x)  # PNG is lossless for uint8 scenes
    assert next(reader.train_batches(4, seed=0)).annotation is not None

    held = str(tmp_path / "s" / "unseen-%06d.tar")
    assert main(["shards", "write", "--source", "shapes", "--split", "eval", "--out", held, "--source-options",
                 "image_size=16", "eval_size=6", "eval_split=unseen"]) == 0, capsys.readouterr().err
    unseen = WebDatasetConfig(urls=held % 0, eval_urls=held % 0, image_size=16).build()
    source = ShapesConfig(image_size=16, eval_size=6).build()
    assert [c for b in unseen.eval_batches(4) for c in b.caption] == next(source.split_batches("unseen", 6)).caption


@pytest.mark.parametrize("args, expect", [
    ([], "give exactly one of --folder"),
    (["--folder", "x", "--source", "shapes"], "give exactly one of --folder"),
    (["--source", "shapes"], "--source needs --count"),
    (["--source", "shape", "--count", "2"], "unknown data source 'shape' (did you mean 'shapes'?)"),
    (["--source", "moons", "--count", "2"], "shards hold 1- or 3-channel images"),
    (["--source", "shapes", "--count", "2", "--source-options", "image_size=24"], "image_size: Input should be"),
    (["--source", "shapes", "--count", "2", "--source-options", "image_size"], "--source-options takes FIELD=VALUE"),
    (["--folder", "x", "--count", "2"], "--count goes with --source"),
])
def test_shards_command_errors(args, expect, tmp_path, capsys):
    assert main(["shards", "write", "--out", str(tmp_path / "x-%06d.tar"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntm shards: error: ") and expect in lines[0], lines
