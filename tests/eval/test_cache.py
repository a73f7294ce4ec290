"""The trained-evaluator cache (``ntm.eval.cache``): one lookup for both evaluators, and reads that run no code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ntm.eval import cache, domain_classifier, shapes_judge
from ntm.eval.cache import cache_path, default_cache_dir, load_or_train, read_payload, write_payload


class _Evaluator:
    def __init__(self, info: dict) -> None:
        self.info = info


def _load(path: Path) -> _Evaluator:
    payload = read_payload(path, "toy evaluator")
    model = _Evaluator(dict(payload["info"], key=payload["key"]))
    model.cache_path = path
    return model


def test_a_miss_trains_and_writes_a_hit_loads(tmp_path: Path) -> None:
    path = cache_path("k1", tmp_path, "toys")
    trained = []

    def train() -> _Evaluator:
        trained.append(1)
        return _Evaluator({"accuracy": 0.5})

    def save(model: _Evaluator, at: Path) -> None:
        write_payload({"key": "k1", "info": model.info, "weights": torch.ones(2)}, at)

    first = load_or_train(path, "k1", load=_load, train=train, save=save)
    assert path == tmp_path / "k1.pt" and path.is_file() and trained == [1]
    assert (first.from_cache, first.cache_path, first.info) == (False, path, {"accuracy": 0.5, "key": "k1"})
    again = load_or_train(path, "k1", load=_load, train=train, save=save)
    assert trained == [1] and again.from_cache is True and again.cache_path == path and again.info == first.info
    assert [p.name for p in tmp_path.iterdir()] == ["k1.pt"]


class _RunsCode:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_reading_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    for read in (lambda p: read_payload(p, "toy evaluator"), domain_classifier.load_domain_classifier,
                 shapes_judge.load_judge):
        with pytest.raises(ValueError, match="evil.pt"):
            read(path)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="toy evaluator checkpoint not found: .*nope.pt"):
        read_payload(tmp_path / "nope.pt", "toy evaluator")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt is not a toy evaluator checkpoint"):
        read_payload(tmp_path / "list.pt", "toy evaluator")


def test_both_evaluators_share_the_cache_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert default_cache_dir("x") == tmp_path / "x"
    assert domain_classifier.default_cache_dir() == tmp_path / "domain_classifiers"
    assert shapes_judge.default_cache_dir() == tmp_path / "shapes_judge"
    assert domain_classifier.CACHE_ENV == cache.CACHE_ENV == "NTM_CACHE"
    monkeypatch.delenv(cache.CACHE_ENV)
    assert cache_path("abc", None, "shapes_judge") == Path.home() / ".cache" / "ntm" / "shapes_judge" / "abc.pt"
