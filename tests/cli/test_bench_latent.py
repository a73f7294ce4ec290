"""``ntm bench latent`` at a tiny budget: the autoencoder trained first, pixel and latent NTM@4 at one wall budget."""

import json

import numpy as np
import pytest

from eval.domain_classifier import DomainClassifierConfig, shapes_domain_classifier
from experiments.cli import main


@pytest.fixture
def cheap_scoring(monkeypatch, tmp_path):
    """A judge stand-in (the judge is tested in tests/eval) and a small shapes domain classifier at 32x32."""
    import eval.fidelity as fidelity
    import eval.shapes_judge as sj
    import experiments.t2i as t2i

    shapes = []

    def fake_score(judge, images, captions, *, held_out=None, **kw):
        shapes.append(tuple(images.shape[1:]))
        assert images.min() >= 0 and images.max() <= 1
        verdicts = [i % 2 == 0 for i in range(len(captions))]
        return {**sj.summarise([sj.parse_caption(c) for c in captions], verdicts, held_out), "verdicts": verdicts}

    classifier = shapes_domain_classifier(32, tmp_path / "dc", DomainClassifierConfig(epochs=1, width=4), train_size=64)
    monkeypatch.setattr(t2i, "score_images", fake_score)
    monkeypatch.setattr(t2i, "shapes_judge", lambda size: object())
    monkeypatch.setattr(fidelity, "domain_extractor_for_shapes",
                        lambda size: (fidelity.DOMAIN_EXTRACTOR, {"weights_path": str(classifier.cache_path)}))
    return shapes


def test_bench_latent_compares_pixels_and_latents_at_one_wall_budget(tmp_path, capsys, cheap_scoring):
    out = tmp_path / "bench"
    argv = ["bench", "latent", "--out", str(out), "--tiny", "--train-steps", "3", "--num-samples", "6",
            "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["pixel-ntm", "pixel-ntm-w1.5", "latent-ntm", "latent-ntm-w1.5"]
    # the judge sees decoded pixels for both models: 32x32 RGB, never 8x8 latents
    assert set(cheap_scoring) == {(3, 32, 32)}
    pixel, latent = rows[0], rows[2]
    assert pixel["space"] == "pixels" and latent["space"] == "latent"
    assert pixel["train_steps"] == 3 and latent["train_steps"] >= 1
    # the latent model's steps come from the pixel model's wall time and its own measured speed
    decision = json.loads((out / "runs" / "shapes32-latent-ntm-K4" / "wall_match.json").read_text())
    assert decision["wall_s"] == pytest.approx(pixel["train_wall_s"])
    assert decision["steps"] == latent["train_steps"] == max(1, int(decision["wall_s"] * decision["steps_per_s"]))
    for r in rows:
        assert np.isfinite(r["metrics"]["fid"]) and r["wall_ms_per_sample"] > 0 and r["train_examples_per_s"] > 0
    assert "cycle_psnr_db" in latent["metrics"] and "cycle_psnr_db" not in pixel["metrics"]
    ae = latent["autoencoder"]
    assert ae["latent_shape"] == [4, 8, 8] and np.isfinite(ae["psnr"])
    assert (out / "runs" / "shapes-ae" / "autoencoder.pt").is_file()
    assert "nll_traj_bpd" in latent["metrics"]  # per latent dimension
    report = (out / "results.md").read_text()
    assert "| latent-ntm | latent |" in report and "autoencoder " in report
    # a second run reuses the autoencoder and both models
    capsys.readouterr()
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["train_steps"] for r in again] == [r["train_steps"] for r in rows]
    assert again[2]["autoencoder"]["fingerprint"] == ae["fingerprint"]
