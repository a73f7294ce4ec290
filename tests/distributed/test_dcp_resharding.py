"""Sharded (DCP) checkpoints across world sizes: 2 ranks save -> 1 process resumes, 1 process saves -> 2 ranks
resume, a SIGKILL during an async save, and each rank writing its half.

One module-scoped set of runs of toy-ntm (4 steps, checkpoints at steps 2 and 4, global batch 64; widths of 64 so
that the shards are even up to the few start/position tokens):

- ``reference``: one process, grad_accum 2, uninterrupted (in-process);
- ``killed``: torchrun, 2 gloo ranks (FSDP2), ``--train.async-checkpoint``; a ``sitecustomize`` makes rank 1
  SIGKILL itself right after its step-4 async save started, so that save is in flight on both ranks;
- ``at1``: a copy of ``killed`` resumed by one process (grad_accum 2, so the same micro-batch noise keys);
- ``at2``: a copy of ``reference`` without its step-4 checkpoint, resumed by 2 ranks (grad_accum 1).

The noise of micro-batch ``chunk = rank * grad_accum + micro`` is keyed by ``(seed, step, chunk)`` and the data
source is handed the start step, so every resumed run must continue the reference's loss curve.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ntm.experiments.cli import main
from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.train.checkpoint.dcp import bytes_per_rank, read_meta
from ntm.train.errors import CheckpointError
from tests.distributed.torchrun_launch import sitecustomize, torchrun

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is required"),
    pytest.mark.slow,  # torchrun launches of two ranks (-m slow); test_parallel.py keeps one in the fast tier
]

TIMEOUT_S = 180
RUN = [
    "train", "toy-ntm",
    "--train.steps", "4",
    "--train.batch-size", "64",
    "--train.warmup-steps", "0",
    "--train.log-every", "1",
    "--train.checkpoint-every", "2",
    "--train.sample-every", "0",
    "--train.device", "cpu",
    "--eval.num-examples", "64",
    "--eval.num-points", "64",
    "--transporter.width", "64",
    "--transporter.num-heads", "2",
    "--transporter.num-blocks", "1",
    "--transporter.layers-per-block", "1",
    "--predictor.width", "64",
    "--predictor.depth", "2",
    "--predictor.num-heads", "2",
]

SITECUSTOMIZE = '''
import os
if "LOCAL_RANK" in os.environ and os.environ.get("NTM_TEST_KILL_AT"):  # torchrun workers of this test only
    with open(os.environ["NTM_TEST_PIDS"], "a") as f:  # workers run in sessions of their own: kill them by pid
        f.write(f"{os.getpid()}\\n")
    import signal

    from ntm.train.checkpoint.dcp import ShardedCheckpointer

    _save = ShardedCheckpointer.save

    def save(self, step, state, **kwargs):
        out = _save(self, step, state, **kwargs)  # async: returns while the writes are in flight
        if self.rank == 1 and step == int(os.environ["NTM_TEST_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    ShardedCheckpointer.save = save
'''


def _torchrun(tmp: Path, name: str, args: list[str], site: Path | None = None, **env: str) -> tuple[int, str]:
    """Two gloo workers running ``ntm *args`` (``site`` first on ``PYTHONPATH``); output to ``tmp/name.log``; on a
    timeout everything is killed."""
    pid_file = tmp / f"{name}.pids"
    return torchrun(["-m", "ntm.experiments.cli", *args], tmp / f"{name}.log", timeout_s=TIMEOUT_S, what=f"torchrun {name}",
                    env={"NTM_TEST_PIDS": str(pid_file), **env}, site=site, pid_file=pid_file)


def _in_process(args: list[str]) -> str:
    """``ntm *args`` in this process; returns its standard output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args)
    assert rc == 0, buf.getvalue()[-2000:]
    return buf.getvalue()


def _curve(run_dir: Path) -> dict[int, float]:
    """Loss per step; a resumed run's lines for a step replace the interrupted run's."""
    return {r["step"]: r["step_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dcp")
    site = sitecustomize(root, SITECUSTOMIZE)
    out: dict = {"root": root}

    out["reference"] = root / "reference"
    _in_process([*RUN, "--run-dir", str(out["reference"]), "--train.grad-accum", "2"])

    out["killed"] = root / "killed"
    out["killed_rc"], out["killed_log"] = _torchrun(
        root, "killed", [*RUN, "--run-dir", str(out["killed"]), "--train.async-checkpoint"], site=site,
        NTM_TEST_KILL_AT="4")

    out["at1"] = root / "at1"
    shutil.copytree(out["killed"], out["at1"])
    out["at1_log"] = _in_process([*RUN, "--run-dir", str(out["at1"]), "--train.grad-accum", "2", "--resume"])

    out["at2"] = root / "at2"
    shutil.copytree(out["reference"], out["at2"])
    CheckpointManager(out["at2"] / "checkpoints").remove(4)
    out["at2_rc"], out["at2_log"] = _torchrun(root, "at2", [*RUN, "--run-dir", str(out["at2"]), "--resume"])
    return out


def test_a_sigkill_during_an_async_save_leaves_the_previous_checkpoint(runs: dict) -> None:
    killed, log = runs["killed"], runs["killed_log"]
    assert runs["killed_rc"] != 0, log[-3000:]
    assert "exitcode: -9" in log, log[-3000:]  # rank 1 died by SIGKILL
    manager = CheckpointManager(killed / "checkpoints")
    assert manager.steps() == [2] and manager.latest_path() == killed / "checkpoints" / "step_00000002"
    state = load_checkpoint(manager.latest_path())  # whole, into this one process
    assert state["step"] == 2 and read_meta(manager.latest_path())["world_size"] == 2
    assert set(state) >= {"model", "ema", "optimizer", "scheduler", "rng", "config"}
    # the save in flight stays under its temporary name, never loaded
    partial = killed / "checkpoints" / "step_00000004.tmp-dcp"
    assert partial.is_dir() and not (partial / "meta.json").exists()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(partial)
    assert "\n" not in str(err.value) and str(partial) in str(err.value) and "meta.json" in str(err.value)


def test_two_ranks_save_and_one_process_resumes_on_the_same_curve(runs: dict) -> None:
    at1 = runs["at1"]
    assert f"resumed from {at1 / 'checkpoints' / 'step_00000002'} at step 2" in runs["at1_log"]
    want, got = _curve(runs["reference"]), _curve(at1)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), (step, got[step], want[step])
    # the killed save's leftover is gone, the new checkpoint complete
    assert sorted(p.name for p in (at1 / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    a = load_checkpoint(CheckpointManager(runs["reference"] / "checkpoints").latest_path(), parts=("model",))
    b = load_checkpoint(CheckpointManager(at1 / "checkpoints").latest_path(), parts=("model",))
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_one_process_saves_and_two_ranks_resume_on_the_same_curve(runs: dict) -> None:
    at2, log = runs["at2"], runs["at2_log"]
    assert runs["at2_rc"] == 0, log[-3000:]
    assert log.count(f"resumed from {at2 / 'checkpoints' / 'step_00000002'} at step 2") == 1
    want, got = _curve(runs["reference"]), _curve(at2)
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), (step, got[step], want[step])
    latest = CheckpointManager(at2 / "checkpoints").latest_path()
    assert latest.name == "step_00000004" and read_meta(latest)["world_size"] == 2
    assert read_meta(at2 / "checkpoints" / "step_00000002")["world_size"] == 1


def test_each_rank_writes_its_half_and_nothing_twice(runs: dict) -> None:
    two = bytes_per_rank(runs["killed"] / "checkpoints" / "step_00000002")
    one = bytes_per_rank(runs["reference"] / "checkpoints" / "step_00000002")
    assert sorted(two) == [0, 1] and sorted(one) == [0]
    total = sum(two.values())
    for rank, size in two.items():
        assert abs(size - total / 2) <= 0.05 * total / 2, (rank, size, total)
    # nothing written twice (a replicated copy would double it): the halves hold what one process writes, plus
    # a record header (about 1 KB) per piece of a tensor, twice as many pieces at two ranks
    assert one[0] <= total <= 1.1 * one[0], (total, one[0])


TERM_SITE = '''
import os
if "LOCAL_RANK" in os.environ and os.environ.get("NTM_TEST_TERM_AT"):  # torchrun workers of this test only
    with open(os.environ["NTM_TEST_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    import signal

    import ntm.train.loop as loop

    _step = loop.train_step

    def train_step(state, batch):
        out = _step(state, batch)
        if os.environ["RANK"] == "1" and state.step == int(os.environ["NTM_TEST_TERM_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)  # rank 1 alone is told to stop
        return out

    loop.train_step = train_step
'''


def test_a_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(runs: dict) -> None:
    """The ranks agree on the stop (rank 0 never got the signal), every rank writes its shards of the step-1
    checkpoint (not one of the run's checkpoint_every 2 steps), and two ranks resume on the reference's curve."""
    root = runs["root"] / "term"
    root.mkdir()
    site = sitecustomize(root, TERM_SITE)
    run_dir = root / "run"
    rc, log = _torchrun(root, "term", [*RUN, "--run-dir", str(run_dir)], site=site, NTM_TEST_TERM_AT="1")
    assert rc != 0 and log.count("stopped by SIGTERM at step 1") == 2, log[-3000:]
    manager = CheckpointManager(run_dir / "checkpoints")
    assert manager.steps() == [1] and set(bytes_per_rank(manager.latest_path())) == {0, 1}
    assert read_meta(manager.latest_path())["world_size"] == 2
    rc, log = _torchrun(root, "resume", [*RUN, "--run-dir", str(run_dir), "--resume"])
    assert rc == 0, log[-3000:]
    want, got = _curve(runs["reference"]), _curve(run_dir)
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # each step once: the stopped run's records end at its checkpoint
    for step in got:  # two ranks' mean vs one process's two micro-batches: equal up to float rounding
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), (step, got[step], want[step])
