"""shapes-eval: the judge reads ground-truth renders back, GenEval's scoring rules, the cache, CLIP score offline.

A small judge is trained once per session into a temporary cache (about 10 s on one core); the full-size
judge's accuracy is measured by ``python -m ntm.eval.shapes_judge`` (docs/evaluation.md has the numbers).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from ntm.eval import shapes_judge
from ntm.eval.shapes_judge import (
    EVAL_SETS,
    TRUST_THRESHOLD,
    JudgeConfig,
    JudgeNotTrusted,
    connected_components,
    contrast_prompt,
    default_cache_dir,
    judge_accuracy,
    judge_key,
    label_maps,
    load_judge,
    load_or_train_judge,
    relation_holds,
    score_images,
    summarise,
    verdict,
)
from ntm.data.shapes import (
    CATEGORIES,
    Shapes,
    ShapesConfig,
    caption_of,
    held_out_pairs,
    parse_caption,
    render,
)

SMALL = JudgeConfig(train_size=4000, eval_size=200)
"""A judge small enough to train in the tests (the default trains on 20000 scenes)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(cache_dir, judge)``: the small judge, trained once into a fresh cache dir."""
    cache = tmp_path_factory.mktemp("shapes_judge")
    return cache, load_or_train_judge(SMALL, cache_dir=cache)


@pytest.fixture(scope="module")
def held_out():
    """200 scenes of each held-out split of the default source (which the judge never trained on)."""
    source = Shapes(ShapesConfig(eval_size=200))
    out = {}
    for split in ("seen", "unseen"):
        batch = source.examples(split, list(range(200)))
        out[split] = (source.to_display(batch.x), list(batch.caption), list(batch.annotation))
    return out, held_out_pairs(source.config)


def obj(shape, colour, centre, size="large"):
    return {"shape": shape, "colour": colour, "size": size, "centre": list(centre)}


def det(shape, colour, centre=(0.5, 0.5)):
    return {"shape": shape, "colour": colour, "centre": list(centre)}


# -- the judge on ground truth -------------------------------------------------------------------------------------
def test_judge_reads_back_held_out_renders(trained, held_out):
    _, judge = trained
    assert judge.from_cache is False and judge.info["train_examples"] == 4000
    assert set(judge.info["accuracy"]) == set(EVAL_SETS)
    assert set(judge.info["accuracy"]["clean/seen"]) == set(CATEGORIES)
    splits, _ = held_out
    for split, (x, _, scenes) in splits.items():
        accuracy = judge_accuracy(judge, x, scenes)
        assert set(accuracy) == {"accuracy", "read_back", "own_prompt", "contrast"}
        assert set(accuracy["accuracy"]) == (set(CATEGORIES) if split == "seen" else
                                             {"colors", "counting", "position", "color_attr"})
        low = {c: a for c, a in accuracy["accuracy"].items() if a < 0.95}
        assert not low, f"{split}: {low}"
        assert accuracy["accuracy"] == judge.info["details"][f"clean/{split}"]["accuracy"]  # the same 200 scenes


def test_detections_describe_the_objects(trained):
    _, judge = trained
    scene = {"objects": [obj("circle", "red", (0.25, 0.25)), obj("star", "blue", (0.75, 0.7), "small")]}
    (found,) = judge.detect(render([scene], 32))
    assert sorted((d["shape"], d["colour"]) for d in found) == [("circle", "red"), ("star", "blue")]
    circle = next(d for d in found if d["shape"] == "circle")
    assert circle["centre"] == pytest.approx([0.25, 0.25], abs=1 / 32)
    assert 0.06 < circle["area"] < 0.11  # pi * 0.16^2 = 0.080
    x0, y0, x1, y1 = circle["bbox"]
    assert x0 < 0.25 < x1 and y0 < 0.25 < y1
    assert 0.5 < circle["confidence"] <= 1
    assert judge.detect(render([{"objects": []}], 32)) == [[]]  # a blank background: nothing


def test_scores_of_ground_truth_and_the_seen_unseen_split(trained, held_out):
    _, judge = trained
    splits, pairs = held_out
    x = torch.cat([splits["seen"][0], splits["unseen"][0]])
    captions = splits["seen"][1] + splits["unseen"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small judge may fall short of the threshold on augmented images
        result = score_images(judge, x, captions, held_out=pairs, allow_untrusted=True)
    assert len(result["verdicts"]) == 400
    assert set(result["per_category"]) == set(CATEGORIES)
    assert result["overall"] == pytest.approx(sum(result["per_category"].values()) / 6)
    assert min(result["per_category"].values()) >= 0.95
    assert sum(result["seen"]["counts"].values()) + sum(result["unseen"]["counts"].values()) == 400
    assert set(result["unseen"]["counts"]) <= {"colors", "counting", "position", "color_attr"}
    assert sum(result["unseen"]["counts"].values()) == 200  # every unseen-split scene names a held-out pair
    contrast = [contrast_prompt(a) for a in splits["seen"][2]]  # parsed prompts are accepted as well
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrong = score_images(judge, splits["seen"][0], contrast, allow_untrusted=True)
    assert max(wrong["per_category"].values()) <= 0.05  # the contrast prompts fail


def test_scoring_is_invariant_to_batch_order(trained, held_out):
    _, judge = trained
    splits, pairs = held_out
    x, captions, _ = splits["unseen"]
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = score_images(judge, x, captions, held_out=pairs, allow_untrusted=True)
        b = score_images(judge, x[order], [captions[i] for i in order], held_out=pairs, allow_untrusted=True,
                         batch_size=37)
    assert b["verdicts"] == [a["verdicts"][i] for i in order]
    assert {k: v for k, v in a.items() if k != "verdicts"} == {k: v for k, v in b.items() if k != "verdicts"}


# -- scoring rules, on hand-made detections ------------------------------------------------------------------------
def test_single_object_two_object_and_colors_rules():
    scene = [det("circle", "red"), det("square", "blue")]
    assert verdict("a circle", scene) and not verdict("a star", scene)
    assert verdict("a circle and a square", scene) and not verdict("a circle and a star", scene)
    assert not verdict("a circle and a circle", scene)  # named twice: two distinct circles needed
    assert verdict("a circle and a circle", [*scene, det("circle", "green")])
    assert verdict("a red circle", scene) and not verdict("a blue circle", scene)  # wrong colour fails
    assert verdict("a red circle and a blue square", scene)
    assert not verdict("a blue circle and a red square", scene)  # colours swapped: attribute binding fails
    assert not verdict("a red circle and a red circle", scene)
    assert not verdict("a circle", [])


def test_counting_rule_is_exact_and_reads_the_colour():
    three = [det("star", "yellow", (0.2 + 0.3 * i, 0.5)) for i in range(3)]
    assert verdict("three yellow stars", three)
    assert not verdict("two yellow stars", three) and not verdict("four yellow stars", three)
    assert not verdict("three yellow stars", [*three, det("star", "yellow")])  # one too many fails
    assert verdict("three yellow stars", [*three, det("star", "red"), det("circle", "yellow")])  # others ignored
    assert not verdict("three red stars", three)  # wrong colour: none counted


def test_position_rule_margin_cone_and_axes():
    left, right = (0.25, 0.5), (0.75, 0.5)
    scene = [det("star", "purple", left), det("square", "orange", right)]
    assert verdict("a purple star to the left of an orange square", scene)
    assert verdict("an orange square to the right of a purple star", scene)
    assert not verdict("a purple star to the right of an orange square", scene)
    assert not verdict("a purple star above an orange square", scene)
    assert not verdict("a purple star to the left of a green square", scene)  # reference absent
    swapped = [det("star", "purple", right), det("square", "orange", left)]
    assert not verdict("a purple star to the left of an orange square", swapped)
    # y points down: "above" is a smaller y
    assert relation_holds((0.5, 0.2), (0.5, 0.8), "above") and relation_holds((0.5, 0.8), (0.5, 0.2), "below")
    assert not relation_holds((0.5, 0.8), (0.5, 0.2), "above")
    # margin: at least POSITION_MARGIN along the axis
    m = shapes_judge.POSITION_MARGIN
    assert relation_holds((0.5 - m - 1e-9, 0.5), (0.5, 0.5), "left of")
    assert not relation_holds((0.5 - 0.9 * m, 0.5), (0.5, 0.5), "left of")
    # cone: within 60 degrees of the axis (the source stays within 45)
    assert relation_holds((0.3, 0.3), (0.5, 0.5), "left of") and relation_holds((0.3, 0.3), (0.5, 0.5), "above")
    assert not relation_holds((0.4, 0.1), (0.5, 0.5), "left of")  # 76 degrees off the axis
    # any qualifying pair of matching objects will do
    crowd = [det("star", "purple", right), det("star", "purple", left), det("square", "orange", (0.5, 0.5))]
    assert verdict("a purple star to the left of an orange square", crowd)


def test_summary_is_the_mean_over_categories_and_splits_by_held_out_pairs():
    prompts = [parse_caption(c) for c in ["a circle", "a circle", "a red circle", "two blue stars",
                                          "a red star and a blue circle"]]
    result = summarise(prompts, [True, False, True, True, False], held_out=[("blue", "star")])
    assert result["per_category"] == {"single_object": 0.5, "colors": 1.0, "counting": 1.0, "color_attr": 0.0}
    assert result["overall"] == pytest.approx(2.5 / 4)
    assert result["counts"] == {"single_object": 2, "colors": 1, "counting": 1, "color_attr": 1}
    assert result["unseen"]["counts"] == {"counting": 1}
    assert result["seen"]["per_category"] == {"single_object": 0.5, "colors": 1.0, "color_attr": 0.0}
    with pytest.raises(ValueError, match="2 prompts but 1 verdicts"):
        summarise(prompts[:2], [True])


def test_contrast_prompts_differ_minimally():
    source = Shapes(ShapesConfig(eval_size=60))
    for i in range(60):
        a = source.annotation("seen", i)
        p, q = parse_caption(caption_of(a)), contrast_prompt(a)
        assert p["category"] == q["category"] and p != q
        if p["category"] == "position":
            assert q["objects"] == p["objects"] and q["relation"] != p["relation"]


# -- scoring rules, on renders -------------------------------------------------------------------------------------
def test_rules_on_rendered_scenes(trained):
    _, judge = trained
    star, square = ("star", "purple"), ("square", "orange")
    scenes = {
        "position": {"objects": [obj(*star, (0.25, 0.5)), obj(*square, (0.75, 0.5))]},
        "swapped": {"objects": [obj(*star, (0.75, 0.5)), obj(*square, (0.25, 0.5))]},
        "three": {"objects": [obj("circle", "yellow", (0.2 + 0.3 * i, 0.3), "small") for i in range(3)]},
        "four": {"objects": [obj("circle", "yellow", (0.2 + 0.3 * i, 0.3), "small") for i in range(3)]
                 + [obj("circle", "yellow", (0.5, 0.75), "small")]},
        "red": {"objects": [obj("triangle", "red", (0.5, 0.5))]},
        "pair": {"objects": [obj("cross", "green", (0.3, 0.7)), obj("diamond", "blue", (0.7, 0.3))]},
    }
    found = dict(zip(scenes, judge.detect(render(list(scenes.values()), 32))))
    caption = "a purple star to the left of an orange square"
    assert verdict(caption, found["position"]) and not verdict(caption, found["swapped"])
    assert verdict("an orange square to the left of a purple star", found["swapped"])
    assert verdict("three yellow circles", found["three"]) and not verdict("three yellow circles", found["four"])
    assert verdict("four yellow circles", found["four"])
    assert verdict("a red triangle", found["red"]) and not verdict("a green triangle", found["red"])
    assert not verdict("a red circle", found["red"])
    assert verdict("a green cross and a blue diamond", found["pair"])
    assert not verdict("a blue cross and a green diamond", found["pair"])


# -- trust, inputs -------------------------------------------------------------------------------------------------
def test_an_untrusted_judge_raises_or_warns(trained):
    _, judge = trained
    weak = copy.deepcopy(judge)
    weak.info["accuracy"] = {"clean/seen": {"counting": TRUST_THRESHOLD - 0.01, "colors": 1.0}}
    assert not weak.trusted and weak.untrusted() == [f"clean/seen/counting: {TRUST_THRESHOLD - 0.01:.3f}"]
    x = render([{"objects": [obj("circle", "red", (0.5, 0.5))]}], 32)
    with pytest.raises(JudgeNotTrusted, match="not trusted .*clean/seen/counting"):
        score_images(weak, x, ["a red circle"])
    with pytest.warns(UserWarning, match="not trusted"):
        assert score_images(weak, x, ["a red circle"], allow_untrusted=True)["verdicts"] == [True]
    weak.info.pop("accuracy")
    assert weak.untrusted() == ["accuracy never measured"]
    good = copy.deepcopy(judge)
    good.info["accuracy"] = {"clean/seen": {"colors": 1.0}}
    assert good.trusted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score_images(good, x, [parse_caption("a red circle")])["per_category"] == {"colors": 1.0}


def test_inputs_are_checked(trained):
    _, judge = trained
    with pytest.raises(ValueError, match=r"reads \(B, 3, 32, 32\) images"):
        judge.detect(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="to_display"):
        judge.detect(torch.full((1, 3, 32, 32), -1.0))
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        score_images(judge, torch.zeros(2, 3, 32, 32), ["a circle"], allow_untrusted=True)
    with pytest.raises(ValueError, match="outside the grammar"):
        verdict("a circle next to a square", [])
    uint8 = render([{"objects": [obj("cross", "orange", (0.4, 0.6))]}], 32)
    assert judge.detect(uint8) == judge.detect(uint8.to(torch.float32) / 255)


def test_connected_components_are_8_connected_and_labelled_by_their_last_pixel():
    mask = torch.tensor([[1, 0, 0, 1],
                         [0, 1, 0, 1],
                         [0, 0, 0, 0],
                         [1, 1, 0, 1]], dtype=torch.bool)[None]  # fmt: skip
    labels = connected_components(mask)[0]
    assert labels.tolist() == [[6, 0, 0, 8], [0, 6, 0, 8], [0, 0, 0, 0], [14, 14, 0, 16]]
    assert connected_components(torch.zeros(2, 5, 5, dtype=torch.bool)).abs().sum() == 0


def test_training_targets_separate_every_object():
    source = Shapes(ShapesConfig(train_size=300))
    annotations = [source.annotation("train", i) for i in range(300)]
    shape_map, colour_map = label_maps(annotations, 32)
    assert ((shape_map > 0) == (colour_map > 0)).all()
    labels = connected_components(shape_map > 0)
    for a, lab in zip(annotations, labels):
        big = [v for v in lab.unique().tolist() if v and (lab == v).sum() >= 4]  # a star's lone spike pixels aside
        assert len(big) == len(a["objects"])


# -- the cache -----------------------------------------------------------------------------------------------------
def test_second_load_hits_the_cache_without_training(trained, monkeypatch):
    cache, judge = trained
    path = judge.cache_path
    assert path.parent == cache and path.name == f"{judge.info['key']}.pt" == f"{judge_key(SMALL)}.pt"
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a cached judge")

    monkeypatch.setattr(shapes_judge, "train_judge", no_training)
    again = load_or_train_judge(SMALL, cache_dir=cache)
    assert again.from_cache is True and again.cache_path == path and path.stat().st_mtime_ns == mtime
    assert again.info["accuracy"] == judge.info["accuracy"] and again.config == SMALL
    x = render([{"objects": [obj("diamond", "green", (0.3, 0.4)), obj("star", "red", (0.7, 0.7))]}], 32)
    assert again.detect(x) == judge.detect(x)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_cache_key_and_directory(monkeypatch, tmp_path):
    key = judge_key(SMALL)
    assert key == judge_key(JudgeConfig(**SMALL.__dict__))
    assert judge_key(dataclasses.replace(SMALL, epochs=2)) != key != judge_key(dataclasses.replace(SMALL, blur=0.5))
    assert judge_key(dataclasses.replace(SMALL, data_seed=2)) != key
    assert judge_key(dataclasses.replace(SMALL, eval_seed=1)) != key
    monkeypatch.setattr(shapes_judge, "JUDGE_VERSION", shapes_judge.JUDGE_VERSION + 1)
    assert judge_key(SMALL) != key
    monkeypatch.delenv("NTM_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "ntm" / "shapes_judge"
    monkeypatch.setenv("NTM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "shapes_judge"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_judge(tmp_path / "nope.pt")
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="foreign.pt"):
        load_judge(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="image_size must be 16, 32 or 64"):
        JudgeConfig(image_size=28)


# -- CLIP score, offline -------------------------------------------------------------------------------------------
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """``(name, weights_path, model)``: a tiny open_clip config with random weights saved to a local file."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    name = "ntm-test-tiny-clip"
    (root / f"{name}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    path = root / "weights.pt"
    torch.save(model.state_dict(), path)
    return name, path, model


def test_clip_score_is_skipped_without_local_weights(tiny_clip):
    from ntm.eval.clip_score import ClipUnavailable, clip_score, load_clip

    name, _, _ = tiny_clip
    x = torch.rand(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="CLIP score skipped: no local weights"):
        assert clip_score(x, ["a red circle", "a square"], model_name=name) is None
    with pytest.raises(ClipUnavailable, match="CLIP score skipped"):
        load_clip(name, None)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip(name, "/nonexistent/missing.pt")
    with pytest.raises(ClipUnavailable, match="remote or directory"):
        load_clip("hf-hub:some/model", tiny_clip[1])
    with pytest.raises(ValueError, match="unknown open_clip model config"):
        load_clip("no-such-config", tiny_clip[1])


def test_clip_score_from_a_local_file_matches_the_definition(tiny_clip):
    import open_clip

    from ntm.eval.clip_score import clip_score, load_clip

    name, path, model = tiny_clip
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    captions = ["a red circle", "two blue squares", "a star above a cross"]
    scorer = load_clip(name, path)
    got = scorer(x, captions)
    assert got.shape == (3,) and got.dtype == torch.float32 and (got >= 0).all() and (got <= 100).all()
    with torch.no_grad():
        pixels = torch.nn.functional.interpolate(x, size=32, mode="bicubic", antialias=True).clamp(0, 1)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        image = model.encode_image((pixels - mean) / std, normalize=True)
        text = model.encode_text(open_clip.tokenize(captions), normalize=True)
    torch.testing.assert_close(got, (100 * (image * text).sum(-1)).clamp_min(0))
    torch.testing.assert_close(clip_score(x, captions, model_name=name, weights_path=path), got)
    torch.testing.assert_close(scorer((x * 255).round().to(torch.uint8), captions), got, atol=0.5, rtol=0)
    other = {k: v + 0.01 for k, v in model.state_dict().items()}  # the weights really come from the file
    torch.save(other, path.parent / "other.pt")
    assert not torch.allclose(load_clip(name, path.parent / "other.pt")(x, captions), got)


def test_training_works_under_no_grad():
    """The first caller to need a judge may be sampling under ``torch.no_grad()`` (``ntm eval --shapes-eval``)."""
    from ntm.eval.shapes_judge import train_judge

    with torch.no_grad():
        judge = train_judge(JudgeConfig(image_size=16, train_size=16, eval_size=8), measure=False)
    assert judge.info["train_examples"] == 16 and math.isfinite(judge.info["final_loss"])
