"""The benches time the loop's own step: :func:`ntm.experiments.bench.scaling.bench_state` +
:func:`ntm.train.step.train_step` (what ``ntm bench gpu`` and ``ntm bench loader`` run) give the parameters, the
EMA and the logged losses of 3 steps of ``ntm train``, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from ntm.experiments.bench.scaling import bench_state
from ntm.experiments.build import build_model, data_for, layout_for
from ntm.experiments.training import parse_experiment
from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.train.loop import train
from ntm.experiments.build import train_job
from ntm.train.step import train_step

FLAGS = {
    "toy-ntm": ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16",
                "--predictor.depth", "1"],
    "digits-ntm": ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16",
                   "--predictor.depth", "1", "--patch-size", "4", "--train.grad-accum", "2"],
}


@pytest.mark.parametrize("preset", list(FLAGS))
def test_three_bench_steps_are_three_loop_steps(preset, tmp_path):
    run = tmp_path / preset
    exp = parse_experiment([preset, *FLAGS[preset], "--run-dir", str(run), "--train.steps", "3", "--train.warmup-steps",
                            "1", "--train.sample-every", "0", "--train.log-every", "1", "--train.batch-size", "16",
                            "--train.device", "cpu", "--train.checkpoint-format", "file"]).experiment
    data = data_for(exp)
    train(train_job(exp, data))
    saved = load_checkpoint(CheckpointManager(run / "checkpoints").latest_path())
    logged = [json.loads(line)["step_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    torch.manual_seed(exp.train.seed)  # the loop seeds before it builds
    state = bench_state(exp, build_model(exp, data), device="cpu", layout=layout_for(exp, data),
                        grad_accum=exp.train.grad_accum)
    batches = data.train_batches(exp.train.batch_size, seed=exp.train.seed)
    losses = [train_step(state, next(batches)).loss for _ in range(3)]

    assert losses == logged
    params = dict(state.inner.named_parameters())
    assert params.keys() == saved["model"].keys()
    assert all(torch.equal(p.detach(), saved["model"][k]) for k, p in params.items())
    assert all(torch.equal(v, saved["ema"]["shadow"][k]) for k, v in state.ema.shadow.items())
