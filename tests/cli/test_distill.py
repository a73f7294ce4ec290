"""``ntm distill`` and ``ntm sample --denoiser`` end to end at a tiny budget, and their refusals."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ntm.experiments.cli import main
from ntm.experiments.distill import DistillConfig
from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.transporters import TarFlow
from tests.cli.test_errors import TINY, fails

D_TINY = ["--width", "16", "--depth", "1", "--num-heads", "2", "--batch-size", "16", "--num-eval", "16"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> Path:
    """A toy-ntm run whose config names denoiser:learned, trained 3 steps, then distilled 3 steps."""
    run = tmp_path_factory.mktemp("distill") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "toy-ntm", "denoiser:learned", "--run-dir", str(run), "--train.steps", "3",
                   "--train.batch-size", "32", "--eval.num-points", "200", *TINY])
    assert rc == 0, err.getvalue()
    # nothing is distilled at the end of training: the final samples are drawn undenoised, with a note
    assert "final samples not denoised" in err.getvalue() and (run / "samples" / "final.png").is_file()
    assert main(["distill", "--run", str(run), "--steps", "3", *D_TINY]) == 0
    return run


def refuse(*args, **kwargs):
    raise AssertionError("sampling with the learned denoiser ran the transporter inverse")


def test_distill_writes_the_denoiser_and_sample_uses_it_without_decoding(distilled, tmp_path, monkeypatch, capsys):
    out = distilled / "denoiser"
    cfg = DistillConfig.model_validate(json.loads((out / "config.json").read_text()))
    assert cfg.network.width == 16 and cfg.train.steps == 3 and cfg.teacher == "step_00000003"
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 3 and math.isfinite(final["mse"]) and math.isfinite(final["psnr_db"])
    assert final["heldout"]["4"]["examples"] == 16 and final["sampled"]["K"] == 4
    state = load_checkpoint(CheckpointManager(out / "checkpoints").latest_path())
    assert all(k.startswith("net.") for k in state["model"])  # D alone: the teacher is not saved again
    assert set(state["ema"]["shadow"]) == set(state["model"])
    with monkeypatch.context() as patch:
        patch.setattr(TarFlow, "inverse", refuse)
        for args in (["--denoiser", "learned"], []):  # explicitly, and as the run's configured denoiser
            png = tmp_path / f"s{len(args)}.png"
            assert main(["sample", "--run", str(distilled), *args, "--out", str(png)]) == 0
            assert png.is_file() and np.isfinite(np.load(png.with_suffix(".npy"))).all()
    png = tmp_path / "score.png"  # the score denoiser decodes every level, so it needs the inverse
    assert main(["sample", "--run", str(distilled), "--denoiser", "score", "--out", str(png)]) == 0
    assert np.load(png.with_suffix(".npy")).shape == (200, 2)
    capsys.readouterr()


def test_distill_resumes_and_refuses_to_start_over_or_change_the_network(distilled, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(distilled, run)
    fails(["distill", "--run", str(run), "--steps", "5"], capsys, "already holds a distilled denoiser (step_00000003); "
          "pass --resume")
    fails(["distill", "--run", str(run), "--steps", "5", "--resume", "--width", "32"], capsys,
          "was written by a different config: field network.width: 16 != 32")
    assert main(["distill", "--run", str(run), "--steps", "5", "--resume"]) == 0  # saved flags kept
    assert "resumed from" in capsys.readouterr().out
    assert CheckpointManager(run / "denoiser" / "checkpoints").steps() == [3, 5]
    steps = [json.loads(line)["step"] for line in (run / "denoiser" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 5 and json.loads((run / "denoiser" / "final.json").read_text())["steps"] == 5


def test_bad_input_is_one_line_and_writes_nothing(distilled, tmp_path, capsys):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(distilled / "config.json", untrained / "config.json")
    fails(["distill", "--run", str(untrained)], capsys, f"no checkpoint in {untrained / 'checkpoints'}")
    assert sorted(p.name for p in untrained.iterdir()) == ["config.json"]
    fails(["distill", "--run", str(tmp_path / "nowhere")], capsys, "config.json does not exist")
    assert not (tmp_path / "nowhere").exists()

    undistilled = tmp_path / "undistilled"
    shutil.copytree(distilled, undistilled, ignore=shutil.ignore_patterns("denoiser", "samples"))
    fails(["sample", "--run", str(undistilled), "--denoiser", "learned"], capsys,
          f"no distilled denoiser in {undistilled / 'denoiser'} (no checkpoint); run `ntm distill --run {undistilled}`")
    fails(["sample", "--run", str(undistilled), "--denoiser", "lerned"], capsys, "unknown denoiser 'lerned'")
    fails(["sample", "--run", str(undistilled), "--denoiser", "score", "--no-denoise"], capsys, "exclude each other")
    assert not (undistilled / "samples").exists() and not (undistilled / "denoiser").exists()
