"""Two-process (gloo, CPU) training through the real CLI matches one process with the same global batch.

``torchrun --nproc_per_node 2 ... train toy-ntm --train.parallel {fsdp,ddp}`` with
global batch B must reproduce ``ntm train toy-ntm --train.grad-accum 2`` with the
same B: the noise of micro-batch ``chunk = rank * grad_accum + micro`` is keyed by
``(seed, step, chunk)`` and the data source hands rank r the r-th slice of the
global batch, so per-step losses, gradient norms and weights agree up to float
summation order. The runs also check that only rank 0 logs and commits
checkpoints (every rank writes its own shards of them), that the EMA gathers for
previews (``--train.sample-every``, a collective under FSDP) do not deadlock, and
that both ranks exit with status 0.

Each torchrun worker gets a ``sitecustomize`` (via ``PYTHONPATH``) that records
every ``CheckpointManager.save`` and ``.commit`` call with the caller's rank, so
"completed once, by rank 0" is observed directly rather than inferred from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.train.checkpoint.dcp import bytes_per_rank
from tests.distributed.torchrun_launch import sitecustomize, torchrun

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is required"
)

STEPS = 4
TIMEOUT_S = 180
TINY = [
    "--train.steps", str(STEPS),
    "--train.batch-size", "64",
    "--train.warmup-steps", "0",
    "--train.log-every", "1",
    "--train.checkpoint-every", "2",
    "--train.device", "cpu",
    "--eval.num-examples", "64",
    "--eval.num-points", "64",
    "--transporter.width", "16",
    "--transporter.num-heads", "2",
    "--transporter.num-blocks", "1",
    "--transporter.layers-per-block", "1",
    "--predictor.width", "16",
    "--predictor.depth", "2",
    "--predictor.num-heads", "2",
]

SITECUSTOMIZE = '''
import os
if "LOCAL_RANK" in os.environ and os.environ.get("NTM_TEST_SAVE_LOG"):  # torchrun workers of this test only
    with open(os.environ["NTM_TEST_PIDS"], "a") as f:  # workers run in sessions of their own: kill them by pid
        f.write(f"{os.getpid()}\\n")

    from ntm.train.checkpoint import CheckpointManager

    _save, _commit = CheckpointManager.save, CheckpointManager.commit

    def record(step):
        with open(os.environ["NTM_TEST_SAVE_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {step}\\n")

    def save(self, step, state):
        record(step)
        return _save(self, step, state)

    def commit(self, step, *args, **kwargs):
        record(step)
        return _commit(self, step, *args, **kwargs)

    CheckpointManager.save, CheckpointManager.commit = save, commit
'''


def _train_single(run_dir: Path, *flags: str) -> str:
    rc, out = torchrun(["-m", "ntm.experiments.cli", "train", "toy-ntm", "--run-dir", str(run_dir), *TINY, *flags],
                       run_dir.parent / "single.log", ranks=None, timeout_s=TIMEOUT_S, what="ntm train",
                       grace_s=20)
    assert rc == 0, out[-4000:]
    return out


def _train_torchrun(run_dir: Path, tmp: Path, *flags: str) -> tuple[str, list[tuple[int, int]]]:
    """Two gloo workers; returns the output and the recorded ``(rank, step)`` checkpoint saves."""
    save_log, pid_file = tmp / "saves.txt", tmp / "worker_pids.txt"
    rc, out = torchrun(["-m", "ntm.experiments.cli", "train", "toy-ntm", "--run-dir", str(run_dir), *TINY, *flags],
                       tmp / "torchrun.log", timeout_s=TIMEOUT_S, what="torchrun ntm train",
                       env={"NTM_TEST_SAVE_LOG": str(save_log), "NTM_TEST_PIDS": str(pid_file)},
                       site=sitecustomize(tmp, SITECUSTOMIZE), pid_file=pid_file, fresh=[run_dir, save_log],
                       grace_s=20)
    # torchrun exits 0 only when every worker exited 0
    assert rc == 0, out[-4000:]
    saves = [tuple(map(int, line.split())) for line in save_log.read_text().splitlines()] if save_log.exists() else []
    return out, saves


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _last_checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(CheckpointManager(run_dir / "checkpoints").path_for(STEPS))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, the same global batch of 64 split into 2 micro-batches of 32."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    _train_single(run_dir, "--train.grad-accum", "2", "--train.sample-every", "0")
    return run_dir


@pytest.mark.parametrize(
    ("strategy", "sample_every"),
    [("fsdp", 0), pytest.param("fsdp", 2, marks=pytest.mark.slow), pytest.param("ddp", 0, marks=pytest.mark.slow)],
    ids=["fsdp", "fsdp-sample-every-2", "ddp"],
)
def test_two_ranks_match_one_process(reference: Path, tmp_path: Path, strategy: str, sample_every: int) -> None:
    run_dir = tmp_path / "run"
    out, saves = _train_torchrun(run_dir, tmp_path, "--train.parallel", strategy,
                                 "--train.sample-every", str(sample_every))

    # -- same curve: every step's loss (mean over ranks), gradient norm and learning rate
    ref, got = _metrics(reference), _metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)), "duplicate or missing metrics lines"
    for a, b in zip(ref, got):
        assert b["step_loss"] == pytest.approx(a["step_loss"], rel=1e-5, abs=1e-5), (a["step"], a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5, abs=1e-5), (a["step"], a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)

    # -- same weights: raw and EMA, from the last checkpoint (unsharded, unprefixed names)
    want, have = _last_checkpoint(reference), _last_checkpoint(run_dir)
    assert have["step"] == STEPS
    assert set(have["model"]) == set(want["model"])
    for name, w in want["model"].items():
        assert type(have["model"][name]) is torch.Tensor, f"{name} saved as {type(have['model'][name]).__name__}"
        torch.testing.assert_close(have["model"][name], w, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    for name, w in want["ema"]["shadow"].items():
        torch.testing.assert_close(have["ema"]["shadow"][name], w, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, n=name: f"ema {n}: {m}")
    assert set(have["optimizer"]["state"]) == set(want["optimizer"]["state"])

    # -- rank 0 alone logs and completes checkpoints, each once; both ranks wrote their shards
    assert sorted(saves) == [(0, 2), (0, STEPS)], f"checkpoint commits (rank, step): {saves}"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", f"step_{STEPS:08d}"]
    assert sorted(bytes_per_rank(run_dir / "checkpoints" / f"step_{STEPS:08d}")) == [0, 1]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1, "more than one TensorBoard writer"
    assert out.count(f"trained toy-ntm: {STEPS} steps") == 1
    assert out.count(f"step {STEPS}/{STEPS} ") == 1

    # -- the run finished: rank 0 evaluated and wrote final.json (and the previews, when asked)
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == STEPS
    previews = sorted(p.name for p in (run_dir / "samples").glob("step_*.png"))
    assert previews == ([f"step_{s:08d}.png" for s in range(sample_every, STEPS + 1, sample_every)]
                        if sample_every else [])
