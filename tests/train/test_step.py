"""One training step outside the loop: the public builder and ``train_step`` give the loop's run, bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ntm.conditioning import ClassLabelConfig, NoConditionConfig
from ntm.data import DigitsConfig, EightGaussiansConfig
from ntm.losses.base import LossOutput
from ntm.losses.nll import EndToEndLoss
from ntm.model import NTMConfig
from ntm.nn.tokens import TokenLayout
from ntm.predictors import TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.train.checkpoint import CheckpointManager, load_checkpoint
from ntm.train.config import TrainConfig
from ntm.train.errors import TrainingError
from ntm.train.loop import TrainJob, train
from ntm.train.step import TrainState, build_train_state, train_step
from ntm.transporters import TarFlowConfig

MODEL = NTMConfig(
    transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, layers_per_block=1),
    predictor=TransformerPredictorConfig(depth=1, width=16, num_heads=2),
)
CASES = {
    # 2-D points, unconditional, one micro-batch
    "points": dict(data=EightGaussiansConfig(), conditioner=NoConditionConfig(), patch=1, train={}),
    # labelled digits with condition dropout over 2 micro-batches, per-group learning rates, a frozen group
    "labels-accum-groups": dict(data=DigitsConfig(), conditioner=ClassLabelConfig(dropout=0.5), patch=2,
                                train={"grad_accum": 2, "lr_scale": {"predictor": 0.5},
                                       "freeze_steps": {"transporter": 1}}),
}
STEPS = 3


def _job(case: dict, run_dir: Path, objective=None) -> TrainJob:
    data = case["data"].build()
    layout = TokenLayout(data.spec.shape, patch_size=case["patch"])
    dims = ModelDims(layout.num_tokens, layout.token_dim, **case["conditioner"].model_dims(data.spec.num_classes))
    cfg = TrainConfig(**{"steps": STEPS, "batch_size": 16, "lr": 1e-2, "warmup_steps": 1, "log_every": 1,
                         "sample_every": 0, "device": "cpu", "checkpoint_format": "file", **case["train"]})
    return TrainJob(
        build_model=lambda: MODEL.build(dims),
        objective=objective or EndToEndLoss(),
        data=data,
        layout=layout,
        conditioner=case["conditioner"].build(),
        train=cfg,
        run_dir=run_dir,
        config={"train": cfg.model_dump(mode="json")},
    )


def _state(job: TrainJob) -> TrainState:
    return build_train_state(job.train, job.build_model, objective=job.objective, conditioner=job.conditioner,
                             layout=job.layout, num_classes=job.data.spec.num_classes)


def _batches(job: TrainJob):
    return job.data.train_batches(job.train.batch_size, seed=job.train.seed)


@pytest.mark.parametrize("name", list(CASES))
def test_three_steps_equal_three_steps_of_the_loop_bitwise(name: str, tmp_path: Path) -> None:
    job = _job(CASES[name], tmp_path / "run")
    train(job)
    saved = load_checkpoint(CheckpointManager(tmp_path / "run" / "checkpoints").latest_path())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    state = _state(_job(CASES[name], tmp_path / "unused"))
    batches = _batches(job)
    results = [train_step(state, next(batches)) for _ in range(STEPS)]

    assert state.step == saved["step"] == STEPS
    assert [r.step for r in results] == list(range(STEPS)) and all(r.finite for r in results)
    assert [r.loss for r in results] == [line["step_loss"] for line in logged]
    assert [r.grad_norm.item() for r in results] == [line["grad_norm"] for line in logged]
    params = dict(state.inner.named_parameters())
    assert params.keys() == saved["model"].keys()
    assert all(torch.equal(params[k].detach(), saved["model"][k]) for k in params)
    assert state.ema.shadow.keys() == saved["ema"]["shadow"].keys()
    assert all(torch.equal(state.ema.shadow[k], saved["ema"]["shadow"][k]) for k in state.ema.shadow)
    assert state.scheduler.state_dict()["last_epoch"] == saved["scheduler"]["last_epoch"]
    moments = state.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[i]["exp_avg"], saved["optimizer"]["state"][n]["exp_avg"])
               for i, n in enumerate(params) if i in moments)


class _PoisonedAt:
    """The end-to-end loss, made NaN at step ``bad`` (told by ``at_step``, as a loss schedule is)."""

    def __init__(self, bad: int) -> None:
        self.loss, self.bad, self.step = EndToEndLoss(), bad, -1

    def at_step(self, step: int, total_steps: int) -> None:
        self.step = step

    def __call__(self, model, x, cond=None, generator=None) -> LossOutput:
        out = self.loss(model, x, cond, generator)
        return LossOutput(out.loss * math.nan if self.step == self.bad else out.loss, out.metrics)


def test_a_non_finite_step_changes_nothing_and_says_so(tmp_path: Path) -> None:
    state = _state(_job(CASES["points"], tmp_path, objective=_PoisonedAt(1)))
    batches = _batches(_job(CASES["points"], tmp_path))
    assert train_step(state, next(batches)).finite
    before = {k: v.detach().clone() for k, v in state.inner.named_parameters()}
    ema, epoch = {k: v.clone() for k, v in state.ema.shadow.items()}, state.scheduler.last_epoch
    result = train_step(state, next(batches))
    assert not result.finite and math.isnan(result.loss) and result.step == 1 and state.step == 1
    assert all(torch.equal(p.detach(), before[k]) and p.grad is None for k, p in state.inner.named_parameters())
    assert all(torch.equal(v, ema[k]) for k, v in state.ema.shadow.items())
    assert state.scheduler.last_epoch == epoch


def test_a_plain_function_conditioner_and_an_indivisible_batch(tmp_path: Path) -> None:
    job = _job(CASES["points"], tmp_path)
    calls = []
    state = build_train_state(job.train.replace(grad_accum=2), job.build_model, objective=job.objective,
                              conditioner=lambda raw, n, gen: calls.append(raw) or None, layout=job.layout,
                              num_classes=0, device="cpu")
    batch = next(_batches(job))
    assert train_step(state, batch).finite and calls == [None, None]  # points have no labels
    with pytest.raises(TrainingError, match="grad_accum"):
        train_step(state, batch.rows(slice(0, 15)))
