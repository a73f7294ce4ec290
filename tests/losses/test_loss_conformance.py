"""Conformance suite: every registered loss, by name, meets the Loss contract.

The checks live in :mod:`ntm.testing`; the model is the first tiny NTM the
loss config accepts (asked through ``config.check_model``). A new loss is
covered the moment it registers.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ntm import testing
from ntm.losses import LOSSES, Loss, LossOutput
from ntm.registry import ComponentConfig


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_meets_the_contract(name):
    testing.check_loss(LOSSES.get(name).config_cls())


class BrokenConfig(ComponentConfig):
    bug: str = "none"

    def build(self) -> "BrokenLoss":
        return BrokenLoss(self.bug)


class BrokenLoss(Loss):
    """Mean squared one-level NLL proxy ``|g(u; 1, 0.5).mu|^2`` with one defect per test."""

    def __init__(self, bug: str) -> None:
        self.bug = bug

    def __call__(self, model, x: Tensor, cond: Tensor | None = None, generator=None) -> LossOutput:
        noise = torch.randn(x.shape, generator=generator if self.bug != "unseeded" else None, dtype=x.dtype)
        b = x.shape[0]
        g = model.predictor(x + noise, torch.ones(b, dtype=x.dtype), torch.full((b,), 0.5, dtype=x.dtype), cond)
        loss = g.mu.square().mean()
        if self.bug == "detached":
            loss = loss.detach()
        if self.bug == "per-example":
            loss = g.mu.square().flatten(1).mean(1)
        metrics = {"mse": loss.detach().mean()}
        if self.bug == "vector-metric":
            metrics["bad"] = torch.zeros(2)
        return LossOutput(loss, metrics)


@pytest.mark.parametrize(
    "bug, message",
    [
        ("detached", "does not depend on any parameter"),
        ("per-example", "loss must be a 0-dim float tensor"),
        ("unseeded", "the same generator seed gave losses"),
        ("vector-metric", r"metric 'bad' is a tensor of shape \(2,\)"),
    ],
)
def test_checks_catch_a_broken_loss(bug, message):
    model = testing.build_model(testing.tiny_model_configs()[0])
    testing.check_loss(BrokenConfig(), model)  # the healthy loss passes
    with pytest.raises(AssertionError, match=message) as info:
        testing.check_loss(BrokenConfig(bug=bug), model)
    assert "loss 'BrokenConfig'" in str(info.value)
