"""``ntm bench latent`` at a tiny budget: the autoencoder trained first, pixel and latent NTM@4 at one wall budget."""

import json

import numpy as np
import pytest

from ntm.experiments.cli import main


@pytest.fixture
def cheap_scoring(cheap_shapes_scoring):
    """The judge stand-in and a small domain classifier at 32x32 (tests/cli/conftest.py); the recorded calls."""
    return cheap_shapes_scoring(32)


@pytest.mark.slow
def test_bench_latent_compares_pixels_and_latents_at_one_wall_budget(tmp_path, capsys, cheap_scoring):
    out = tmp_path / "bench"
    argv = ["bench", "latent", "--out", str(out), "--tiny", "--train-steps", "3", "--num-samples", "6",
            "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["pixel-ntm", "pixel-ntm-w1.5", "latent-ntm", "latent-ntm-w1.5"]
    # the judge sees decoded pixels for both models: 32x32 RGB, never 8x8 latents
    assert {shape for _, shape in cheap_scoring} == {(3, 32, 32)}
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
