"""Shared fixtures of the command-line tests."""

from __future__ import annotations

import pytest

from ntm.eval.domain_classifier import DomainClassifierConfig, shapes_domain_classifier


@pytest.fixture
def cheap_shapes_scoring(monkeypatch, tmp_path):
    """``install(size)``: a judge stand-in (the judge is tested in tests/eval) that passes every other image and
    records each call's image shape, and a small shapes domain classifier at ``size`` (1 epoch, 64 scenes) in a
    private cache. Returns the list of recorded ``(num_captions, image shape)``."""
    import ntm.eval.fidelity as fidelity
    import ntm.eval.shapes_judge as sj
    import ntm.experiments.t2i as t2i

    calls: list[tuple[int, tuple[int, ...]]] = []

    def fake_score(judge, images, captions, *, held_out=None, **kw):
        calls.append((len(captions), tuple(images.shape[1:])))
        assert images.min() >= 0 and images.max() <= 1
        verdicts = [i % 2 == 0 for i in range(len(captions))]
        return {**sj.summarise([sj.parse_caption(c) for c in captions], verdicts, held_out), "verdicts": verdicts}

    def install(size: int) -> list[tuple[int, tuple[int, ...]]]:
        classifier = shapes_domain_classifier(size, tmp_path / "dc", DomainClassifierConfig(epochs=1, width=4),
                                              train_size=64)
        monkeypatch.setattr(t2i, "score_images", fake_score)
        monkeypatch.setattr(t2i, "shapes_judge", lambda size: object())
        monkeypatch.setattr(fidelity, "domain_extractor_for_shapes",
                            lambda size: (fidelity.DOMAIN_EXTRACTOR, {"weights_path": str(classifier.cache_path)}))
        return calls

    return install
