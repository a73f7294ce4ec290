"""EMA of module weights: update rule, warmup, copy/swap, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntm.train.ema import EMA


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _shift_(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value)


def test_initial_shadow_is_a_float32_copy() -> None:
    model = _model().to(torch.bfloat16)
    ema = EMA(model, 0.9)
    for name, p in model.named_parameters():
        assert ema.shadow[name].dtype == torch.float32
        assert torch.equal(ema.shadow[name], p.float())
        assert ema.shadow[name].data_ptr() != p.data_ptr()


def test_decay_zero_copies_params_and_buffers() -> None:
    model = _model()
    ema = EMA(model, 0.0)
    _shift_(model, 1.5)
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running stats
    ema.update(model)
    for name, p in model.named_parameters():
        assert torch.equal(ema.shadow[name], p)
    for name, b in model.named_buffers():
        assert torch.equal(ema.buffers[name], b)


def test_decay_one_keeps_the_initial_weights() -> None:
    model = _model()
    initial = _params(model)
    ema = EMA(model, 1.0)
    for _ in range(3):
        _shift_(model, 2.0)
        ema.update(model)
    for name, p in initial.items():
        assert torch.equal(ema.shadow[name], p)


def test_known_value_after_one_update() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.fill_(4.0)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
        model.bias.fill_(-6.0)
    used = ema.update(model)
    assert used == 0.9
    # 0.9 * old + 0.1 * new
    torch.testing.assert_close(ema.shadow["weight"], torch.tensor([[1.2, -1.8]]))
    torch.testing.assert_close(ema.shadow["bias"], torch.tensor([3.0]))
    assert ema.num_updates == 1


def test_update_from_low_precision_params() -> None:
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model, 0.5)
    start = {n: s.clone() for n, s in ema.shadow.items()}
    _shift_(model, 1.0)
    ema.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[name], 0.5 * start[name] + 0.5 * p.float())
        assert ema.shadow[name].dtype == torch.float32


def test_warmup_schedule() -> None:
    model = _model()
    ema = EMA(model, 0.99, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**6) == 0.99
    assert EMA(model, 0.99).decay_at(0) == 0.99
    assert ema.update(model) == pytest.approx(0.1)
    assert ema.update(model) == pytest.approx(2 / 11)
    assert ema.update(model, decay=0.5) == 0.5  # explicit decay wins
    with pytest.raises(ValueError):
        ema.update(model, decay=1.5)


def test_copy_to_and_swap_into() -> None:
    model = _model()
    ema = EMA(model, 0.0)
    _shift_(model, 3.0)
    ema.update(model)  # shadow = shifted weights
    _shift_(model, -10.0)
    own = _params(model)
    own_buffers = {n: b.clone() for n, b in model.named_buffers()}

    with ema.swap_into(model) as swapped:
        assert swapped is model
        for name, p in model.named_parameters():
            assert torch.equal(p, ema.shadow[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, own[name])
    for name, b in model.named_buffers():
        assert torch.equal(b, own_buffers[name])

    with pytest.raises(RuntimeError, match="boom"):  # restored on error too
        with ema.swap_into(model):
            raise RuntimeError("boom")
    for name, p in model.named_parameters():
        assert torch.equal(p, own[name])

    other = _model(seed=1)
    ema.copy_to(other)
    for name, p in other.named_parameters():
        assert torch.equal(p, ema.shadow[name])


def test_state_dict_round_trip() -> None:
    model = _model()
    ema = EMA(model, 0.7, warmup=True)
    for _ in range(3):
        _shift_(model, 0.25)
        ema.update(model)
    state = ema.state_dict()

    fresh = EMA(_model(seed=5), 0.7, warmup=True)
    fresh.load_state_dict(state)
    assert fresh.num_updates == 3
    for name in ema.shadow:
        assert torch.equal(fresh.shadow[name], ema.shadow[name])
    for name in ema.buffers:
        assert torch.equal(fresh.buffers[name], ema.buffers[name])
    # the two continue identically
    ema.update(model)
    fresh.update(model)
    for name in ema.shadow:
        assert torch.equal(fresh.shadow[name], ema.shadow[name])


def test_mismatched_models_are_rejected() -> None:
    ema = EMA(_model(), 0.9)
    with pytest.raises(ValueError, match="missing"):
        ema.update(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="unexpected"):
        bad = {"shadow": {**ema.shadow, "extra": torch.zeros(1)}, "buffers": ema.buffers, "num_updates": 0}
        ema.load_state_dict(bad)


def test_non_persistent_buffers_stay_out_and_the_ema_loads_into_a_fresh_model():
    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.register_buffer("count", torch.zeros(()))
            self.register_buffer("mask", torch.ones(3, 3).tril(), persistent=False)

    model = WithMask()
    ema = EMA(model, decay=0.5)
    assert set(ema.buffers) == {"count"}
    with torch.no_grad():
        model.lin.weight.add_(1.0)
        model.count.fill_(7)
    ema.update(model)
    fresh = WithMask()
    state = {**ema.state_dict()["shadow"], **ema.state_dict()["buffers"]}
    fresh.load_state_dict(state)  # strict: no unexpected non-persistent keys
    assert fresh.count.item() == 7
    torch.testing.assert_close(fresh.lin.weight, ema.shadow["lin.weight"])
