"""``ntm finetune --from RUN``: end to end at a tiny budget, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntm.experiments.cli import main
from ntm.train.checkpoint import CheckpointManager

TINY_TEACHER = ["--predictor.xhat.depth", "1", "--predictor.xhat.width", "16", "--predictor.xhat.num-heads", "2",
                "--sampler.num-steps", "4", "--train.sample-every", "0", "--eval.num-examples", "64"]
TINY_FINETUNE = ["--transporter.width", "16", "--transporter.num-heads", "2", "--train.sample-every", "0",
                 "--eval.num-examples", "64", "--train.batch-size", "32"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "fm"
    assert main(["train", "toy-flow-matching", "--run-dir", str(run_dir), "--train.steps", "3", *TINY_TEACHER]) == 0
    return run_dir


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("step ", "ntm: note"))]


def test_finetune_runs_like_any_run_and_resumes(teacher, tmp_path, capsys):
    run_dir = tmp_path / "ft"
    args = ["finetune", "--from", str(teacher), "--run-dir", str(run_dir), *TINY_FINETUNE]
    assert main([*args, "--train.steps", "2"]) == 0, capsys.readouterr().err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["init"]["path"] == str(teacher) and config["loss"]["name"] == "finetune"
    assert config["model"]["predictor"]["xhat"]["width"] == 16  # the teacher's network, not the preset's
    assert config["model"]["predictor"]["learned_scale"] and config["model"]["predictor"]["reference"]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 2 and final["nll_traj_bpd"] is not None
    assert main([*args, "--train.steps", "3", "--resume"]) == 0, capsys.readouterr().err
    assert CheckpointManager(run_dir / "checkpoints").steps()[-1] == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("align_mse" in r and "align_weight" in r for r in records)


def test_dry_run_shows_the_teacher_and_writes_nothing(teacher, tmp_path, capsys):
    run_dir = tmp_path / "never"
    assert main(["finetune", "--from", str(teacher), "--run-dir", str(run_dir), "--process.steps", "2", "4", "8",
                 "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["name"] == "fm-finetune" or resolved["name"].endswith("-finetune")
    assert resolved["model"]["process"]["steps"] == [2, 4, 8] and resolved["init"]["path"] == str(teacher)
    assert not run_dir.exists()


def test_bad_input_is_one_line_and_writes_nothing(teacher, tmp_path, capsys):
    ntm_run = tmp_path / "ntm"
    assert main(["train", "toy-ntm", "--run-dir", str(ntm_run), "--train.steps", "1", "--train.sample-every", "0",
                 "--eval.num-examples", "32", "--predictor.width", "16", "--predictor.depth", "1",
                 "--transporter.width", "16", "--transporter.num-heads", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    cases = [
        (["--from", str(ntm_run)], "is not a flow-matching model"),
        (["--from", str(tmp_path / "nowhere")], "is neither a run directory nor a checkpoint file"),
        (["--from", str(teacher), "--predictor.xhat.width", "32"], "does not fit this model"),
        (["--from", str(teacher), "--loss.align-weight", "-1"], "loss.align_weight"),
        ([], "--from RUN_OR_CHECKPOINT is required"),
    ]
    for args, expect in cases:
        assert main(["finetune", *args, "--run-dir", str(out), *TINY_FINETUNE, "--train.steps", "1"]) == 2, args
        lines = error_lines(capsys)
        assert lines and all(line.startswith("ntm finetune: error: ") for line in lines), lines
        assert any(expect in line for line in lines), (expect, lines)
        assert not out.exists(), args
