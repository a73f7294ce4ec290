"""Checkpoint directories (torch.distributed.checkpoint) in one process: round trip, visibility, rotation, the
readers of both formats, ``ntm export``, and one-line errors for partial, foreign or mismatched checkpoints.
The multi-rank behaviour (resharding, per-rank bytes, a SIGKILL during an async save) is in
tests/distributed/test_dcp_resharding.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntm.experiments.cli import main
from ntm.train.checkpoint import (
    CheckpointManager,
    is_checkpoint_dir,
    load_checkpoint,
    load_sampling_weights,
    read_sampling_state,
    sampling_state_dict,
)
from ntm.train.checkpoint.dcp import (
    ShardedCheckpointer,
    load_training_state,
    read_meta,
    training_state,
)
from ntm.train.ema import EMA
from ntm.train.errors import CheckpointError


class _Parts:
    """A model (with a buffer), AdamW, a schedule and the EMA, one optimizer step in."""

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Linear(width, 2))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0 / (1 + s))
        self.ema = EMA(self.model, 0.9)
        self.step()

    def step(self) -> None:
        self.model(torch.randn(5, 4)).square().sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.ema.update(self.model)

    def state(self, step: int) -> dict:
        return training_state(self.model, self.optimizer, self.scheduler, self.ema, 0, 1, step)


def _save(directory: Path, step: int, parts: _Parts, *, keep: int = 3, async_save: bool = False) -> Path | None:
    manager = CheckpointManager(directory, keep=keep, format="dcp")
    saver = ShardedCheckpointer(manager, 0, 1, async_save=async_save, meta={"config": {"name": "x", "step": step}})
    return saver.save(step, parts.state(step), block=True)


def _one_line(err: pytest.ExceptionInfo, *texts: object) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for text in texts:
        assert str(text) in msg, (text, msg)
    return msg


# -- round trip -------------------------------------------------------------------
def test_a_directory_reads_back_like_a_file_and_resumes_exactly(tmp_path: Path) -> None:
    parts = _Parts()
    path = _save(tmp_path, 3, parts)
    assert path == tmp_path / "step_00000003" and is_checkpoint_dir(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]
    assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp", "meta.json"]
    meta = read_meta(path)
    assert meta["step"] == 3 and meta["world_size"] == 1 and meta["config"] == {"name": "x", "step": 3}

    state = load_checkpoint(path)  # weights_only reads
    assert state["step"] == 3 and state["config"] == meta["config"]
    for name, value in parts.model.state_dict().items():
        assert torch.equal(state["model"][name], value), name
    assert state["ema"]["num_updates"] == 1 and set(state["ema"]["buffers"]) == {"1.running_mean", "1.running_var",
                                                                               "1.num_batches_tracked"}
    for name, value in parts.ema.shadow.items():
        assert torch.equal(state["ema"]["shadow"][name], value), name
    assert torch.equal(state["optimizer"]["state"]["0.weight"]["exp_avg"], parts.optimizer.state[parts.model[0].weight]["exp_avg"])
    assert state["optimizer"]["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert state["scheduler"] == parts.scheduler.state_dict()
    assert torch.equal(state["rng"]["torch"], torch.get_rng_state())
    # parts: only what is asked is read; () reads meta.json alone
    assert set(load_checkpoint(path, parts=("ema",))) == {"format", "step", "config", "ema"}
    assert set(load_checkpoint(path, parts=())) == {"format", "step", "config"}
    assert set(read_sampling_state(path)) == {"format", "step", "config", "ema"}
    assert set(read_sampling_state(path, "raw")) == {"format", "step", "config", "model"}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, parts=(), required=("model", "teacher"))
    _one_line(err, path, "missing required keys: teacher")

    # resume into fresh parts: weights, moments, schedule, EMA and RNG continue exactly
    draws = torch.rand(3)
    fresh = _Parts(seed=1)
    torch.manual_seed(99)
    assert load_training_state(path, fresh.model, fresh.optimizer, fresh.scheduler, fresh.ema, 0, 1) == 3
    assert torch.equal(torch.rand(3), draws)
    for p in (parts, fresh):
        torch.manual_seed(5)  # the same batch for both
        p.step()
    for (name, a), b in zip(parts.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.ema.num_updates == parts.ema.num_updates == 2
    assert fresh.scheduler.get_last_lr() == parts.scheduler.get_last_lr()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    load_sampling_weights(model, path)
    assert torch.equal(model[0].weight, state["ema"]["shadow"]["0.weight"])


def test_an_async_save_is_visible_only_once_committed(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2, format="dcp")
    saver = ShardedCheckpointer(manager, 0, 1, async_save=True, meta={"config": {}})
    parts = _Parts()
    assert saver.save(1, parts.state(1)) is None  # in flight
    assert manager.steps() in ([], [1])  # only a finished, committed save shows
    saved = parts.model[0].weight.detach().clone()
    parts.step()  # training goes on while it writes: the save holds the weights of step 1
    while saver.poll() is None and manager.steps() != [1]:
        time.sleep(0.01)
    assert manager.steps() == [1] and saver.wait() is None
    assert torch.equal(load_checkpoint(manager.latest_path(), parts=("model",))["model"]["0.weight"], saved)
    for step in (2, 3):
        saver.save(step, parts.state(step))
    saver.wait()
    assert manager.steps() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]


# -- the directory --------------------------------------------------------------------
def test_partial_and_temporary_directories_are_ignored_then_cleaned(tmp_path: Path) -> None:
    parts = _Parts()
    _save(tmp_path, 2, parts)
    killed = tmp_path / "step_00000007.tmp-dcp"  # a save killed before its commit
    shutil.copytree(tmp_path / "step_00000002", killed)
    (killed / "meta.json").unlink()
    unnamed = tmp_path / "step_00000009"  # a final name without meta.json (copied by hand, say)
    unnamed.mkdir()
    unrelated = tmp_path / "notes.tmp-1"
    unrelated.write_text("keep me")
    old = time.time() - 60
    for p in (killed, unrelated):
        os.utime(p, (old, old))
    manager = CheckpointManager(tmp_path, format="dcp")
    assert manager.steps() == [2] and manager.latest_path() == tmp_path / "step_00000002"
    for bad in (killed, unnamed):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        _one_line(err, bad, "without meta.json")
    _save(tmp_path, 4, parts)  # a commit deletes the killed save's leftovers
    assert not killed.exists() and unrelated.exists() and unnamed.exists()
    # a step saved again (e.g. a non-finite loss right after its checkpoint) replaces the directory
    parts.step()
    _save(tmp_path, 4, parts)
    assert torch.equal(load_checkpoint(tmp_path / "step_00000004", parts=("model",))["model"]["0.weight"],
                       parts.model[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp-1", "step_00000002", "step_00000004",
                                                          "step_00000009"]


def test_rotation_spans_files_and_directories(tmp_path: Path) -> None:
    parts = _Parts()
    manager = CheckpointManager(tmp_path, keep=2, format="dcp")
    manager.save(1, {"step": 1})  # a file, as an earlier run of the same directory wrote
    _save(tmp_path, 2, parts, keep=2)
    assert manager.steps() == [1, 2] and manager.path_for(1).name == "step_00000001.pt"
    _save(tmp_path, 3, parts, keep=2)
    assert manager.steps() == [2, 3] and not (tmp_path / "step_00000001.pt").exists()
    assert manager.path_for(5) == tmp_path / "step_00000005"  # a step not saved yet: the manager's format
    assert CheckpointManager(tmp_path).path_for(5) == tmp_path / "step_00000005.pt"
    manager.remove(3)
    assert manager.steps() == [2]


def test_partial_damaged_or_foreign_directories_are_one_line_errors(tmp_path: Path) -> None:
    parts = _Parts()
    first, second = _save(tmp_path, 1, parts), _save(tmp_path, 2, parts)
    (second / "__0_0.distcp").unlink()  # a rank's file lost after the fact
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(second)
    _one_line(err, second, "is partial: __0_0.distcp is missing")
    manager = CheckpointManager(tmp_path, format="dcp")
    with pytest.warns(UserWarning, match="step_00000002"):
        path, state = manager.load_latest(parts=())  # falls back to the previous one
    assert path == first and state["step"] == 1

    data = (first / "__0_0.distcp").read_bytes()
    (first / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(first)
    _one_line(err, first, "is partial: __0_0.distcp is truncated")

    third = _save(tmp_path, 3, parts)
    meta = json.loads((third / "meta.json").read_text())
    (third / "meta.json").write_text(json.dumps({**meta, "format": "ntm-dcp-9"}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(third)
    _one_line(err, third, "ntm-dcp-9")
    (third / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(third)
    _one_line(err, third, "meta.json cannot be read")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "step_00000042")
    _one_line(err, "does not exist")


class _Opaque:
    pass


def test_entries_other_than_tensors_and_plain_containers_are_refused(tmp_path: Path) -> None:
    parts = _Parts()
    state = parts.state(1)
    state["scheduler"] = {"obj": _Opaque()}
    manager = CheckpointManager(tmp_path, format="dcp")
    path = ShardedCheckpointer(manager, 0, 1, meta={"config": {}}).save(1, state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _one_line(err, path, "other than tensors and plain containers")
    assert isinstance(load_checkpoint(path, weights_only=False)["scheduler"]["obj"], _Opaque)


def test_a_model_of_another_shape_is_refused_naming_the_parameter_and_both_shapes(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, _Parts())
    wider = _Parts(width=16)
    with pytest.raises(CheckpointError) as err:
        load_training_state(path, wider.model, wider.optimizer, wider.scheduler, wider.ema, 0, 1)
    _one_line(err, path, "does not fit this model: model.0.weight is (8, 4) there and (16, 4) here (and ")
    other = _Parts()
    other.model.add_module("3", nn.Linear(2, 2))
    other.optimizer = torch.optim.AdamW(other.model.parameters())
    other.ema = EMA(other.model)
    with pytest.raises(CheckpointError) as err:
        load_training_state(path, other.model, other.optimizer, other.scheduler, other.ema, 0, 1)
    _one_line(err, "it lacks model.3.weight, which this model has")


# -- through the command line ---------------------------------------------------------------
TINY = ["--train.batch-size", "32", "--train.warmup-steps", "0", "--train.checkpoint-every", "1",
        "--train.sample-every", "0", "--train.device", "cpu", "--eval.num-examples", "32", "--eval.num-points", "32",
        "--transporter.width", "16", "--transporter.num-heads", "2", "--transporter.num-blocks", "1",
        "--transporter.layers-per-block", "1", "--predictor.width", "16", "--predictor.depth", "1",
        "--predictor.num-heads", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("dcp-cli") / "run"
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), "--train.steps", "2", *TINY]) == 0
    return run_dir


def _fails(args: list[str], capsys, *texts: object) -> str:
    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for text in texts:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def _snapshot(directory: Path) -> dict[str, bytes]:
    # (the run's .lock is rewritten by whoever holds it: it names the holder, and holds no state)
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_export_writes_one_file_that_samples_like_the_run(run: Path, tmp_path: Path, capsys) -> None:
    latest = CheckpointManager(run / "checkpoints").latest_path()
    assert latest.name == "step_00000002" and is_checkpoint_dir(latest)
    capsys.readouterr()
    assert main(["export", "--run", str(run)]) == 0
    out = run / "export" / "step_00000002-ema.safetensors"
    assert f"-> {out}" in capsys.readouterr().out
    from safetensors.torch import load_file

    from ntm.experiments.exports import read_export

    info = read_export(out)
    assert info.step == 2 and info.weights == "ema"
    assert info.payload["config"] == json.loads((run / "config.json").read_text())
    want = sampling_state_dict(load_checkpoint(latest))
    got = {k.removeprefix("model."): v for k, v in load_file(out).items()}  # the EMA weights, nothing else
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    raw = tmp_path / "raw.safetensors"
    assert main(["export", "--run", str(run), "--weights", "raw", "--out", str(raw)]) == 0
    assert read_export(raw).weights == "raw"
    samples = []
    for i, checkpoint in enumerate((out, latest)):  # the same samples from the file and from the directory
        png = tmp_path / f"s{i}.png"
        assert main(["sample", "--run", str(run), "--checkpoint", str(checkpoint), "--out", str(png)]) == 0
        samples.append(np.load(png.with_suffix(".npy")))
    np.testing.assert_array_equal(samples[0], samples[1])
    capsys.readouterr()


def test_bad_checkpoints_on_the_command_line_are_one_line_and_overwrite_nothing(run: Path, tmp_path: Path, capsys):
    missing = run / "checkpoints" / "step_00000042"
    _fails(["sample", "--run", str(run), "--checkpoint", str(missing)], capsys, missing, "does not exist")
    _fails(["export", "--run", str(run), "--checkpoint", str(missing)], capsys, missing, "does not exist")
    partial = tmp_path / "step_00000002.tmp-dcp"
    shutil.copytree(run / "checkpoints" / "step_00000002", partial)
    (partial / "meta.json").unlink()
    _fails(["eval", "--run", str(run), "--checkpoint", str(partial)], capsys, partial, "without meta.json")

    # resuming a model of another shape: here the saved config is made to agree, so only the shapes differ
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    latest = CheckpointManager(copy / "checkpoints").latest_path()
    meta = json.loads((latest / "meta.json").read_text())
    meta["config"]["model"]["predictor"]["width"] = 24
    (latest / "meta.json").write_text(json.dumps(meta))
    before = _snapshot(copy)
    line = _fails(["train", "toy-ntm", "--run-dir", str(copy), *TINY, "--train.steps", "3", "--predictor.width", "24",
                   "--resume"], capsys, latest, "does not fit this model: model.predictor.")
    assert "16" in line and "24" in line
    assert _snapshot(copy) == before  # nothing overwritten: checkpoints, config.json, metrics


def test_a_run_of_checkpoint_files_still_exports_and_resumes(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "files"
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), "--train.steps", "2", *TINY,
                 "--train.checkpoint-format", "file"]) == 0
    manager = CheckpointManager(run_dir / "checkpoints")
    assert manager.latest_path().name == "step_00000002.pt"
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "e.safetensors")]) == 0
    from ntm.experiments.exports import read_export

    assert read_export(tmp_path / "e.safetensors").weights == "ema"
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), *TINY, "--train.steps", "3", "--resume"]) == 0
    assert manager.steps() == [2, 3] and manager.latest_path().name == "step_00000003"  # continued in directories
    capsys.readouterr()

