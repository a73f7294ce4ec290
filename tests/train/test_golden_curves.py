"""Behaviour guard: seed-0 loss curves of toy-ntm, digits-ntm and the flow-matching baseline, 20 steps.

``golden_loss_curves.json`` was recorded before the component-swapping refactor
(same command lines); refactors of configs, registries, samplers and the loop
must leave every step's loss unchanged: to 1e-6, or to 1e-5 of its value on a CPU
other than the recording one (its vector width reorders float32 sums; the last
bits differ from the first steps and drift apart over 20 steps of training, by
up to 1.3e-6 of the loss, measured). A refactor is checked bit for bit by
recording the curves before and after on one machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntm.experiments.build import train_job
from ntm.experiments.training import parse_experiment
from ntm.train.loop import train

GOLDEN = json.loads((Path(__file__).parent / "golden_loss_curves.json").read_text())
CASES = {
    "toy-ntm": ["toy-ntm"],
    "digits-ntm": ["digits-ntm"],
    "toy-flow-matching": ["toy-ntm", "transporter:identity", "predictor:posterior", "loss:flow-matching", "sampler:euler",
                          "--predictor.xhat.depth", "4", "--predictor.xhat.width", "64"],
}
COMMON = ["--train.steps", "20", "--train.warmup-steps", "5", "--train.log-every", "1", "--train.sample-every", "0",
          "--train.device", "cpu"]


@pytest.mark.parametrize("name", list(CASES))
def test_seed0_loss_curve_is_unchanged(name, tmp_path):
    run_dir = tmp_path / name
    exp = parse_experiment([*CASES[name], "--run-dir", str(run_dir), *COMMON]).experiment
    train(train_job(exp, exp.data.build()))
    curve = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        curve[record["step"]] = record["step_loss"]
    got = [curve[i] for i in range(1, 21)]
    assert got == pytest.approx(GOLDEN[name], abs=1e-6, rel=1e-5)
