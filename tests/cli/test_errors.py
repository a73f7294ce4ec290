"""Bad input gives one clear line per problem (exit status 2; 3 for a non-finite loss), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntm.experiments.cli import main
from ntm.train.checkpoint import CheckpointManager, load_checkpoint

TINY = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1",
        "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "32"]


def fails(args: list[str], capsys, expect: str, status: int = 2) -> list[str]:
    rc = main(args)
    err = capsys.readouterr().err
    prefix = f"ntm {args[0]}: error: "
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("step ")]  # progress lines
    assert rc == status, err
    assert "Traceback" not in err
    assert lines and all(line.startswith(prefix) for line in lines), err
    assert any(expect in line for line in lines), err
    return lines


def trained_run(tmp_path: Path, capsys, name: str = "run", steps: int = 2) -> Path:
    run_dir = tmp_path / name
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), "--train.steps", str(steps), *TINY]) == 0
    capsys.readouterr()
    return run_dir


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--train.lr", "-1"], "train.lr: Input should be greater than 0"),
        (["transporter:nope"], "unknown transporter 'nope'; known transporters: identity, tarflow"),
        (["--process.schedule.t-min", "0"], "process.schedule.t_min: Input should be greater than 0"),
        (["process.schedule:explicit", "--process.schedule.times", "0.1", "0.5", "0.4", "1.0"],
         "process.schedule.times: times: times must be strictly increasing"),
        (["process.schedule:explicit", "--process.schedule.times", "0.1", "0.5", "0.9"], "t_K must be 1"),
        (["--train.batch-size", "7", "--train.grad-accum", "2"], "train.batch_size (7) must be divisible"),
        (["data:image-folder", "--data.path", "/no/such/dir"], "/no/such/dir"),
        (["predictor:trajectory", "loss:pair-wise"], "pair-wise needs a Markov predictor"),
        (["loss:flow-matching", "predictor:posterior"], "would ignore transporter 'tarflow'; use transporter:identity"),
        (["transporter:identity", "sampler:euler"], "velocity"),
        (["--eval.steps", "8"], "eval.steps [8] were not trained"),
        (["--process.steps", "0"], "process.steps: steps must be distinct integers >= 1"),
    ],
)
def test_bad_config_values(args, expect, capsys):
    fails(["train", "toy-ntm", *args], capsys, expect)


def test_several_bad_fields_are_reported_together(capsys):
    lines = fails(["train", "toy-ntm", "--train.lr", "-1", "--process.schedule.t-min", "0"], capsys, "train.lr")
    assert len(lines) == 2 and any("process.schedule.t_min" in line for line in lines)


def test_missing_and_invalid_config_files(tmp_path, capsys):
    fails(["train", "--config", str(tmp_path / "none.json")], capsys, f"config file {tmp_path / 'none.json'} does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fails(["train", "--config", str(bad)], capsys, f"config file {bad} is not valid JSON")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"train": {"lr": "fast"}}))
    fails(["train", "--config", str(wrong)], capsys, "train.lr: Input should be a valid number")


def test_checkpoint_from_another_config_is_refused_naming_the_fields(tmp_path, capsys):
    run_dir = trained_run(tmp_path, capsys)
    fails(["train", "toy-ntm", "--run-dir", str(run_dir), "--resume", *TINY, "--predictor.depth", "2"], capsys,
          "was written by a different config: field model.predictor.depth: 1 != 2")
    other = trained_run(tmp_path, capsys, name="other")
    ckpt = CheckpointManager(other / "checkpoints").latest_path()
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"]["predictor"]["width"] = 32
    (run_dir / "config.json").write_text(json.dumps(cfg))
    fails(["sample", "--run", str(run_dir), "--checkpoint", str(ckpt)], capsys, "field model.predictor.width: 16 != 32")


def test_existing_run_needs_resume(tmp_path, capsys):
    run_dir = trained_run(tmp_path, capsys)
    fails(["train", "toy-ntm", "--run-dir", str(run_dir), *TINY], capsys, "already holds checkpoints")


def test_corrupt_or_missing_checkpoints(tmp_path, capsys):
    run_dir = trained_run(tmp_path, capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    fails(["eval", "--run", str(run_dir), "--checkpoint", str(garbage)], capsys, str(garbage))
    fails(["sample", "--run", str(tmp_path / "nowhere")], capsys, "config.json does not exist")
    manager = CheckpointManager(run_dir / "checkpoints")
    for step in manager.steps():
        manager.remove(step)
    fails(["eval", "--run", str(run_dir)], capsys, "no checkpoint in")


def test_corrupt_shards_are_an_error_when_nothing_is_readable(tmp_path, capsys):
    shard = tmp_path / "broken-000000.tar"
    shard.write_bytes(b"this is not a tar archive" * 100)
    fails(["train", "toy-ntm", "data:webdataset", "--data.urls", str(shard), "--data.image-size", "8",
           "--data.channels", "1", "--run-dir", str(tmp_path / "r"), *TINY], capsys, str(shard))


def test_a_warmup_longer_than_the_run_is_clamped_with_a_note(tmp_path, capsys):
    run_dir = tmp_path / "short"
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), *TINY, "--train.warmup-steps", "50",
                 "--train.steps", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("ntm: note: train.warmup_steps (50) exceeds train.steps (2); using 2") == 1
    assert load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest_path())["step"] == 2


def test_injected_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path, capsys, monkeypatch):
    import dataclasses
    import math

    from ntm.losses.nll import EndToEndLoss

    # the fault comes from outside the loop: the loss turns NaN on its 4th call, i.e. at step 3 (grad_accum 1)
    loss_call, calls = EndToEndLoss.__call__, []

    def nan_on_the_4th_call(self, *args, **kwargs):
        out = loss_call(self, *args, **kwargs)
        calls.append(None)
        return dataclasses.replace(out, loss=out.loss * math.nan) if len(calls) == 4 else out

    monkeypatch.setattr(EndToEndLoss, "__call__", nan_on_the_4th_call)
    run_dir = tmp_path / "nan"
    lines = fails(["train", "toy-ntm", "--run-dir", str(run_dir), "--train.steps", "10", *TINY], capsys,
                  "non-finite loss at step 3", status=3)
    assert len(calls) == 4
    assert str(run_dir / "checkpoints") in lines[0]
    state = load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest_path())
    assert state["step"] == 3
    # the saved state is the last good one: resuming without the fault continues cleanly
    monkeypatch.undo()
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), "--train.steps", "5", "--resume", *TINY]) == 0
    assert load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest_path())["step"] == 5


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, expect",
    [
        (["trian"], "ntm: error: unknown command 'trian' (did you mean 'train'?)"),
        (["train", "digit-ntm"], "ntm train: error: unknown preset 'digit-ntm' (did you mean 'digits-ntm'?)"),
        (["train", "toy-ntm", "transporter:tarflw"], "ntm train: error: transporter:tarflw: unknown transporter 'tarflw' (did you mean 'tarflow'?)"),
        (["train", "toy-ntm", "predictr:transformer"], "ntm train: error: predictr:transformer: unknown slot 'predictr' (did you mean 'predictor'?)"),
        (["train", "toy-ntm", "--predictor.dept", "3"], "ntm train: error: did you mean --predictor.depth"),
        (["train", "toy-ntm", "--train.lr"], "ntm train: error: Missing value for argument '--train.lr'"),
        (["sample", "--nope"], "ntm sample: error: "),
        (["shards"], "ntm shards: error: "),
        (["--plugin"], "ntm: error: --plugin needs a module name"),
    ],
)
def test_every_command_reports_errors_in_one_style(args, expect, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "╭" not in err
    assert lines and all(line.startswith(("ntm: error: ", f"ntm {args[0]}: error: ")) for line in lines), err
    assert any(line.startswith(expect) for line in lines), err


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ntm {version('ntm')}"


def test_sampler_override_that_the_sampler_does_not_have_names_the_field(tmp_path, capsys):
    run_dir = trained_run(tmp_path, capsys)
    fails(["sample", "--run", str(run_dir), "--temperature", "0"], capsys, "sampler.temperature: Input should be greater than 0")
