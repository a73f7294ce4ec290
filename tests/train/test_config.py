"""TrainConfig: warm-up as a count or a fraction of the run, resolved to one step count."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ntm.train.config import RESUMABLE_FIELDS, TrainConfig
from ntm.train.optim import make_scheduler


@pytest.mark.parametrize(
    ("steps", "warmup", "count"),
    [
        (50, 0, 0),
        (50, 10, 10),
        (50, 50, 50),
        (50, 100, 50),  # a count beyond the run is clamped
        (50, 0.1, 5),
        (100, 0.29, 29),  # nearest step, whatever the float error of 0.29 * 100
        (10, 0.25, 2),  # halves round to even
        (3, 0.01, 0),
    ],
)
def test_warmup_count(steps: int, warmup: int | float, count: int) -> None:
    cfg = TrainConfig(steps=steps, warmup_steps=warmup)
    assert cfg.warmup_count == count
    assert type(cfg.warmup_steps) is type(warmup)


def test_warmup_keeps_its_type_through_json() -> None:
    for warmup in (100, 0.1):
        cfg = TrainConfig(steps=50, warmup_steps=warmup)
        again = TrainConfig.model_validate_json(cfg.model_dump_json())
        assert again == cfg and type(again.warmup_steps) is type(warmup)


@pytest.mark.parametrize("warmup", [0.0, 1.0, 1.5, 100.0, -1, -0.5])
def test_bad_warmups_are_refused(warmup: float) -> None:
    with pytest.raises(pydantic.ValidationError, match="warmup_steps"):
        TrainConfig(steps=50, warmup_steps=warmup)


def test_scheduler_uses_the_resolved_count() -> None:
    def lrs(**fields) -> list[float]:
        cfg = TrainConfig(lr=1.0, **fields)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        scheduler = make_scheduler(optimizer, cfg)
        out = []
        for _ in range(cfg.steps):
            optimizer.step()
            scheduler.step()
            out.append(scheduler.get_last_lr()[0])
        return out

    assert lrs(steps=8, warmup_steps=0.25) == lrs(steps=8, warmup_steps=2)
    assert lrs(steps=8, warmup_steps=100) == lrs(steps=8, warmup_steps=8)
    assert lrs(steps=8, warmup_steps=0) != lrs(steps=8, warmup_steps=2)


def test_fault_injection_is_not_a_config_field() -> None:
    with pytest.raises(pydantic.ValidationError, match="fail_at_step"):
        TrainConfig(fail_at_step=3)
    assert not any("fail_at_step" in field for field in RESUMABLE_FIELDS)
