"""Conditioners: class-label dropout to the null label, and the unconditional variant."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ntm.conditioning import CONDITIONERS, ClassLabelConfig, NoConditionConfig

NUM_CLASSES = 10


def labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


def test_registered():
    assert {"class", "none"} <= set(CONDITIONERS.names())
    assert CONDITIONERS.load({"name": "class", "dropout": 0.2}) == ClassLabelConfig(dropout=0.2)


@pytest.mark.parametrize("dropout", [0.1, 0.5, 0.9])
def test_dropout_rate_matches_empirical_fraction(dropout):
    conditioner = ClassLabelConfig(dropout=dropout).build()
    y = labels(200_000)
    out = conditioner(y, NUM_CLASSES, torch.Generator().manual_seed(1))
    assert out.shape == y.shape and out.dtype == torch.int64
    dropped = out == NUM_CLASSES
    # binomial std at n = 2e5 is <= 0.0012; 5 sigma
    assert abs(dropped.double().mean().item() - dropout) < 0.006
    assert torch.equal(out[~dropped], y[~dropped])  # kept labels are untouched
    assert ((out >= 0) & (out <= NUM_CLASSES)).all()


def test_dropout_is_deterministic_given_the_generator():
    conditioner = ClassLabelConfig(dropout=0.3).build()
    y = labels(1000)
    a = conditioner(y, NUM_CLASSES, torch.Generator().manual_seed(5))
    b = conditioner(y, NUM_CLASSES, torch.Generator().manual_seed(5))
    c = conditioner(y, NUM_CLASSES, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(y, labels(1000))  # the input is not modified in place


def test_zero_dropout_returns_labels_unchanged():
    y = labels(500)
    out = ClassLabelConfig(dropout=0.0).build()(y, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert torch.equal(out, y)


def test_class_conditioner_passes_unconditional_batches_through():
    assert ClassLabelConfig().build()(None, NUM_CLASSES) is None


def test_class_conditioner_rejects_bad_input():
    conditioner = ClassLabelConfig().build()
    with pytest.raises(ValueError, match="num_classes"):
        conditioner(labels(4), 0)
    with pytest.raises(TypeError, match="int64"):
        conditioner(labels(4).float(), NUM_CLASSES)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_must_lie_in_unit_interval(dropout):
    with pytest.raises(pydantic.ValidationError):
        ClassLabelConfig(dropout=dropout)


def test_none_returns_none():
    conditioner = NoConditionConfig().build()
    assert conditioner(labels(8), NUM_CLASSES, torch.Generator()) is None
    assert conditioner(None, 0) is None
