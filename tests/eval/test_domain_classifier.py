"""The digits domain classifier: accuracy, unit-RMS features, the on-disk cache and its key (plain torch)."""

import ast
from pathlib import Path

import pytest
import torch

import ntm.eval.domain_classifier as domain_classifier
from ntm.eval.domain_classifier import (
    DomainClassifierConfig,
    default_cache_dir,
    digits_domain_classifier,
    domain_classifier_key,
    load_domain_classifier,
)


@pytest.fixture(scope="module")
def trained(digits_classifier_cache):
    return digits_classifier_cache


def test_domain_classifier_is_accurate_on_held_out_digits(trained, digits):
    _, model = trained
    assert model.from_cache is False
    acc = model.accuracy(digits["eval_x"], digits["eval_y"])
    assert acc > 0.95
    assert model.info["heldout_accuracy"] == pytest.approx(acc)
    assert model.info["heldout_examples"] == 270
    feats = model.features(digits["train_x"])
    assert feats.shape == (digits["train_x"].shape[0], 128)
    assert feats.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)  # unit-RMS features


def test_second_call_hits_the_cache_without_retraining(trained, digits, monkeypatch):
    cache, model = trained
    path = model.cache_path
    assert path.parent == cache and path.name == f"{model.info['key']}.pt"
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a cached checkpoint")

    monkeypatch.setattr(domain_classifier, "train_domain_classifier", no_training)
    again = digits_domain_classifier(cache_dir=cache)
    assert again.from_cache is True and again.cache_path == path
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in cache.iterdir()) == [path.name]
    x = digits["eval_x"][:16]
    torch.testing.assert_close(again.features(x), model.features(x))
    assert again.info["heldout_accuracy"] == model.info["heldout_accuracy"]


def test_cache_key_follows_data_and_hyper_parameters(digits):
    x, y = digits["train_x"], digits["train_y"]
    key = domain_classifier_key(x, y, 10)
    assert key == domain_classifier_key(x.clone(), y.clone(), 10)
    changed = x.clone()
    changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
    assert domain_classifier_key(changed, y, 10) != key
    relabelled = y.clone()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert domain_classifier_key(x, relabelled, 10) != key
    assert domain_classifier_key(x, y, 10, DomainClassifierConfig(epochs=3)) != key
    assert domain_classifier_key(x[:-1], y[:-1], 10) != key


def test_cache_dir_defaults_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("NTM_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "ntm" / "domain_classifiers"
    monkeypatch.setenv("NTM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "domain_classifiers"


def test_missing_or_foreign_checkpoints_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_domain_classifier(missing)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a domain classifier checkpoint"):
        load_domain_classifier(foreign)


def test_cache_key_is_pinned():
    # Checkpoints already on disk are found by this key: a change here orphans every user's cache.
    x = torch.linspace(0, 1, 32).reshape(2, 1, 4, 4)
    assert domain_classifier_key(x, torch.tensor([0, 1]), 2) == "69856226dc7def1d3f7ca614412e1a0e"


def test_the_module_does_not_import_torch_fidelity():
    tree = ast.parse(Path(domain_classifier.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported and not any(name.split(".")[0] == "torch_fidelity" for name in imported)


def test_config_rejects_impossible_hyper_parameters():
    with pytest.raises(ValueError, match="epochs"):
        DomainClassifierConfig(epochs=0)
    with pytest.raises(ValueError, match="lr > 0"):
        DomainClassifierConfig(lr=0.0)


def test_shapes_scene_label_is_the_leftmost_objects_pair(tmp_path):
    from ntm.eval.domain_classifier import shapes_domain_classifier, shapes_scene_label
    from ntm.data.shapes import COLOURS, SHAPES

    objects = [{"colour": "blue", "shape": "star", "centre": [0.7, 0.5]},
               {"colour": "red", "shape": "cross", "centre": [0.2, 0.9]}]
    label = shapes_scene_label({"objects": objects})
    assert label == list(COLOURS).index("red") * len(SHAPES) + SHAPES.index("cross")
    assert shapes_scene_label({"objects": objects[:1]}) != label
    small = DomainClassifierConfig(width=4, feature_dim=8, epochs=1)
    first = shapes_domain_classifier(16, tmp_path, small, train_size=32)
    again = shapes_domain_classifier(16, tmp_path, small, train_size=32)
    assert not first.from_cache and again.from_cache and first.num_classes == 36
    assert 0 <= first.info["heldout_accuracy"] <= 1
