"""The training loop on a tiny NTM over 2-D toy data: logged values, warm-up, the weights it hands back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ntm.conditioning import NoConditionConfig
from ntm.data import EightGaussiansConfig
from ntm.losses.base import LossOutput
from ntm.losses.nll import EndToEndLoss
from ntm.model import NTMConfig
from ntm.nn.tokens import TokenLayout
from ntm.predictors import TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.train.checkpoint import CheckpointManager, load_sampling_weights
from ntm.train.config import TrainConfig
from ntm.train.loop import TrainJob, TrainResult, train
from ntm.transporters import TarFlowConfig


def _job(run_dir: Path, objective=None, **train_fields) -> TrainJob:
    data = EightGaussiansConfig().build()
    layout = TokenLayout(data.spec.shape)
    model = NTMConfig(
        transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, layers_per_block=1),
        predictor=TransformerPredictorConfig(depth=1, width=16, num_heads=2),
    )
    cfg = TrainConfig(**{"steps": 4, "batch_size": 16, "warmup_steps": 0, "log_every": 2, "sample_every": 0,
                         "device": "cpu", **train_fields})
    return TrainJob(
        build_model=lambda: model.build(ModelDims(layout.num_tokens, layout.token_dim)),
        objective=objective or EndToEndLoss(),
        data=data,
        layout=layout,
        conditioner=NoConditionConfig().build(),
        train=cfg,
        run_dir=run_dir,
        config={"train": cfg.model_dump(mode="json")},
    )


def _logged(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` without the wall-clock fields."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time")
        line.pop("examples_per_s")
    return lines


class _Counting:
    """The end-to-end loss, its metrics replaced by the call count ``n`` (and ``10 n`` per rank)."""

    def __init__(self, as_tensor: bool) -> None:
        self.loss, self.calls, self.as_tensor = EndToEndLoss(), 0, as_tensor

    def __call__(self, model, x, cond=None, generator=None) -> LossOutput:
        self.calls += 1
        out = self.loss(model, x, cond, generator)
        metrics = {"calls": float(self.calls), "calls/x10": 10.0 * self.calls}
        if self.as_tensor:
            metrics = {k: torch.tensor(v, dtype=torch.float32) for k, v in metrics.items()}
        return LossOutput(out.loss, metrics)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-metrics", "tensor-metrics"])
def test_logged_metrics_are_the_last_steps_micro_batch_means(tmp_path: Path, as_tensor: bool) -> None:
    train(_job(tmp_path / "run", _Counting(as_tensor), grad_accum=2))
    logged = _logged(tmp_path / "run")
    assert [line["step"] for line in logged] == [2, 4]
    # step index 1 makes calls 3 and 4, step index 3 makes calls 7 and 8
    assert [(line["calls"], line["calls/x10"]) for line in logged] == [(3.5, 35.0), (7.5, 75.0)]


def test_float_and_tensor_metrics_log_the_same_values(tmp_path: Path) -> None:
    def plain(as_tensor: bool):
        loss = EndToEndLoss()

        def objective(model, x, cond=None, generator=None) -> LossOutput:
            out = loss(model, x, cond, generator)
            cast = (lambda v: torch.as_tensor(v).detach()) if as_tensor else (lambda v: float(v))
            return LossOutput(out.loss, {k: cast(v) for k, v in out.metrics.items()})

        return objective

    for name, as_tensor in (("floats", False), ("tensors", True)):
        train(_job(tmp_path / name, plain(as_tensor), grad_accum=2, log_every=3, steps=5))
    floats, tensors = _logged(tmp_path / "floats"), _logged(tmp_path / "tensors")
    assert [line["step"] for line in floats] == [3, 5]
    assert {"nll_traj_bpd", "bound_bpd", "nll_bpd/K4"} <= floats[0].keys()
    assert floats == tensors


def test_loss_is_the_window_mean_and_the_curve_does_not_depend_on_the_log_cadence(tmp_path: Path) -> None:
    train(_job(tmp_path / "every", log_every=1))
    train(_job(tmp_path / "pairs", log_every=2))
    every, pairs = _logged(tmp_path / "every"), _logged(tmp_path / "pairs")
    steps = [line["step_loss"] for line in every]
    assert [line["loss"] for line in every] == steps
    assert [line["loss"] for line in pairs] == [(steps[0] + steps[1]) / 2, (steps[2] + steps[3]) / 2]
    assert [line["step_loss"] for line in pairs] == [steps[1], steps[3]]


def test_the_returned_model_holds_the_checkpointed_ema_weights(tmp_path: Path) -> None:
    job = _job(tmp_path / "run")
    result: TrainResult = train(job)
    assert result.ema_model is not None and not result.ema_model.training
    latest = CheckpointManager(tmp_path / "run" / "checkpoints").latest_path()
    want = load_sampling_weights(job.build_model(), latest).state_dict()
    got = result.ema_model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    raw = load_sampling_weights(job.build_model(), latest, "raw").state_dict()
    assert any(not torch.equal(raw[k], want[k]) for k in want)


def test_a_warmup_longer_than_the_run_is_clamped_with_one_note(tmp_path: Path, capsys) -> None:
    clamped = train(_job(tmp_path / "clamped", warmup_steps=100, steps=3, log_every=1))
    err = capsys.readouterr().err
    assert err.count("ntm: note: train.warmup_steps (100) exceeds train.steps (3); using 3\n") == 1
    exact = train(_job(tmp_path / "exact", warmup_steps=3, steps=3, log_every=1))
    assert "ntm: note" not in capsys.readouterr().err
    assert _logged(tmp_path / "clamped") == _logged(tmp_path / "exact")
    assert clamped.last_loss == exact.last_loss


def test_a_warmup_fraction_is_the_rounded_count(tmp_path: Path, capsys) -> None:
    train(_job(tmp_path / "fraction", warmup_steps=0.5, steps=4, log_every=1))
    train(_job(tmp_path / "count", warmup_steps=2, steps=4, log_every=1))
    assert "ntm: note" not in capsys.readouterr().err
    fraction, count = _logged(tmp_path / "fraction"), _logged(tmp_path / "count")
    assert fraction == count
    lrs = [line["lr"] for line in count]
    assert lrs[0] < lrs[1] and lrs[1] == max(lrs)  # warm-up over 2 steps, then the cosine decay
