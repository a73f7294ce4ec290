"""A run directory has one writer; a resume never starts over on top of checkpoints; damage is caught by checksums;
a non-finite state is never saved; SIGTERM, SIGINT and kill -9 at random moments lose nothing: the resumed run's
loss curve and metrics.jsonl equal an uninterrupted run's exactly."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from ntm.experiments.cli import main
from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.train.lock import RunDirLocked, RunLock

SMALL = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1",
         "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "8", "--train.batch-size", "32"]


def _train(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "toy-ntm", *SMALL, "--run-dir", str(run_dir), "--train.steps", str(steps), *extra]


def _error(args: list[str], capsys, status: int = 2) -> str:
    """The one stderr line of a command that fails with ``status``."""
    capsys.readouterr()
    assert main(args) == status
    lines = _problems(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def _problems(err: str) -> list[str]:
    """stderr without the progress lines (``step 3/5 loss ...``)."""
    return [line for line in err.strip().splitlines() if not line.startswith("step ")]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A toy run with checkpoint directories at steps 1, 2, 3."""
    run_dir = tmp_path_factory.mktemp("stops") / "run"
    assert main(_train(run_dir, 3, "--train.checkpoint-every", "1", "--train.keep-checkpoints", "3")) == 0
    assert CheckpointManager(run_dir / "checkpoints").steps() == [1, 2, 3]
    return run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


# -- one writer per run directory -------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        line = _error(_train(run_dir, 1), capsys)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the refused run wrote nothing
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and str(run_dir) in line


def test_the_lock_is_freed_when_its_holder_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ntm.train.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(120)", str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"pid {holder.pid} "):
            RunLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run_dir) as lock:  # nothing to clean up after kill -9
        assert lock.held


def test_a_lock_that_made_the_directory_leaves_nothing_behind(tmp_path):
    with RunLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


# -- resume that cannot lose work -------------------------------------------------------------------------------------
def test_resume_with_no_loadable_checkpoint_refuses_naming_each(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    for step_dir in (copy / "checkpoints").iterdir():  # every shard file zero-filled
        shard = step_dir / "__0_0.distcp"
        shard.write_bytes(bytes(shard.stat().st_size))
    before = _snapshot(copy)
    line = _error(_train(copy, 5, "--resume"), capsys)
    assert "no checkpoint" in line and "loads" in line
    for step in (1, 2, 3):
        assert f"step_{step:08d}: __0_0.distcp fails its checksum" in line, line
    assert _snapshot(copy) == before  # nothing overwritten, no step 0 restart


def test_a_fresh_start_never_overwrites_a_checkpoint_even_an_incomplete_one(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    for step_dir in (copy / "checkpoints").iterdir():
        (step_dir / "meta.json").unlink()  # no complete checkpoint left
    before = _snapshot(copy)
    assert "already holds checkpoints" in _error(_train(copy, 5), capsys)
    line = _error(_train(copy, 5, "--resume"), capsys)
    assert "step_00000003 is incomplete" in line and "step_00000001 is incomplete" in line
    assert _snapshot(copy) == before


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the stored tensor data of a checkpoint file or shard (not its index or pickle)."""
    if path.suffix == ".pt":
        with zipfile.ZipFile(path) as archive:
            info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
            with open(path, "rb") as f:  # the member's data follows its local header
                f.seek(info.header_offset + 26)
                name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    else:
        offset = path.stat().st_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["dcp", "file"])
def test_flipped_bytes_are_caught_and_resume_falls_back_to_the_newest_intact(tmp_path, capsys, fmt):
    run_dir = tmp_path / "run"
    assert main(_train(run_dir, 3, "--train.checkpoint-every", "1", "--train.checkpoint-format", fmt)) == 0
    newest = CheckpointManager(run_dir / "checkpoints").latest_path()
    _flip_tensor_byte(newest / "__0_0.distcp" if fmt == "dcp" else newest)
    line = _error(["sample", "--run", str(run_dir)], capsys)
    assert str(newest) in line and "checksum" in line

    capsys.readouterr()
    with pytest.warns(UserWarning) as warned:
        assert main(_train(run_dir, 4, "--train.checkpoint-every", "1", "--train.checkpoint-format", fmt,
                           "--resume")) == 0
    skipped = [str(w.message) for w in warned if "skipping" in str(w.message)]
    assert len(skipped) == 1 and str(newest) in skipped[0] and "checksum" in skipped[0], skipped
    assert "at step 2" in capsys.readouterr().out  # the newest intact one


# -- finite by construction -------------------------------------------------------------------------------------------
def test_a_non_finite_weight_stops_the_run_and_is_never_saved(tmp_path, capsys, monkeypatch):
    original = torch.optim.AdamW.step
    calls = []

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the weights after the second step hold an inf; its loss was finite
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    run_dir = tmp_path / "run"
    line = _error(_train(run_dir, 5, "--train.checkpoint-every", "1"), capsys, status=3)
    assert "non-finite weights at step 2" in line and "step_00000001" in line
    manager = CheckpointManager(run_dir / "checkpoints")
    assert manager.steps() == [1]
    state = load_checkpoint(manager.latest_path())
    tensors = [*state["model"].values(), *state["ema"]["shadow"].values()]
    assert tensors and all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


# -- stops at random moments: the resumed run equals an uninterrupted one ---------------------------------------------
STEPS = 40


def _cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ntm.experiments.cli", "train", "toy-ntm", *SMALL, "--run-dir", str(run_dir),
            "--train.steps", str(STEPS), "--train.log-every", "3", "--train.threads", "1", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING = ("time", "examples_per_s")


def _records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest_path())
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"]["shadow"].items()}}


def _same_run(run_dir: Path, reference: Path) -> None:
    assert _records(run_dir) == _records(reference)  # every logged number, to the last bit
    a, b = _weights(run_dir), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for fmt in ("dcp", "file"):
        run_dir = tmp_path_factory.mktemp("reference") / fmt
        done = subprocess.run(_cli(run_dir, "--train.checkpoint-format", fmt, "--train.checkpoint-every", "7"),
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        out[fmt] = run_dir
    return out


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dcp", "file"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_at_a_random_step_saves_and_the_resumed_run_is_identical(references, tmp_path, fmt, sig):
    run_dir = tmp_path / "run"
    args = _cli(run_dir, "--train.checkpoint-format", fmt, "--train.checkpoint-every", "7")
    at = random.Random(f"{fmt}{int(sig)}").randrange(4, 30)
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_step(run_dir) >= at or proc.poll() is not None)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    lines = _problems(err)
    assert len(lines) == 1 and lines[0].startswith(f"ntm train: stopped by {signal.Signals(sig).name} at step"), lines
    stopped = int(lines[0].split(" at step ")[1].split(";")[0])
    assert at <= stopped < STEPS and CheckpointManager(run_dir / "checkpoints").steps()[-1] == stopped
    assert "Traceback" not in err and not (run_dir / "final.json").exists()

    done = subprocess.run(args + ["--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"at step {stopped}" in done.stdout and f"resumed at step {stopped}; {STEPS} in all" in done.stdout
    _same_run(run_dir, references[fmt])


@pytest.mark.slow
def test_kill_9_during_dcp_saves_twice_then_resume_is_identical(references, tmp_path):
    run_dir = tmp_path / "run"
    args = _cli(run_dir, "--train.checkpoint-format", "dcp", "--train.checkpoint-every", "2")
    checkpoints = run_dir / "checkpoints"
    rng = random.Random(9)
    landed = []
    for attempt, at in enumerate((rng.randrange(4, 15), rng.randrange(20, 32))):
        proc = subprocess.Popen(args + (["--resume"] if attempt else []), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        saving = lambda: any(".tmp-" in p.name for p in checkpoints.iterdir()) if checkpoints.is_dir() else False
        _wait_for(lambda: (_logged_step(run_dir) >= at and saving()) or proc.poll() is not None)
        time.sleep(rng.uniform(0, 0.005))  # a random moment inside the save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        landed.append(saving())
    steps = CheckpointManager(checkpoints).steps()
    assert steps and max(steps) < STEPS
    done = subprocess.run(args + ["--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    _same_run(run_dir, references["dcp"])
    print(f"kills left a save half-written: {landed}")


def test_a_full_disk_during_a_sharded_save_says_so_and_keeps_the_last_checkpoint(run, tmp_path, capsys, monkeypatch):
    import errno

    from torch.distributed.checkpoint import FileSystemWriter

    copy = _copy(run, tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(self.path) / "__0_0.distcp"))

    monkeypatch.setattr(FileSystemWriter, "write_data", full)
    line = _error(_train(copy, 5, "--train.checkpoint-every", "1", "--train.keep-checkpoints", "3", "--resume"),
                  capsys)
    assert "no space left on device writing" in line and "disk is full" in line, line
    assert f"{copy / 'checkpoints' / 'step_00000004'}" in line  # the checkpoint it was writing, not a temporary
    manager = CheckpointManager(copy / "checkpoints")
    assert manager.steps() == [1, 2, 3] and load_checkpoint(manager.latest_path(), parts=())["step"] == 3
