"""The weights to sample with: EMA shadow + buffers when a checkpoint has them, raw weights otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ntm.train.checkpoint import load_sampling_weights, sampling_state_dict, save_checkpoint
from ntm.train.ema import EMA
from ntm.train.errors import CheckpointError


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _state() -> tuple[nn.Module, dict]:
    """A trained-looking checkpoint state whose EMA differs from the raw weights in every tensor."""
    torch.manual_seed(0)
    model = _model()
    ema = EMA(model, decay=0.5)
    model.train()
    model(torch.randn(8, 3))  # moves the BatchNorm running stats
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    return model, {"step": 1, "model": model.state_dict(), "ema": ema.state_dict()}


def _assert_loaded(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value.to(got[name].dtype)), name


def test_ema_weights_are_the_shadow_and_buffers() -> None:
    model, state = _state()
    weights = sampling_state_dict(state)
    assert weights.keys() == model.state_dict().keys()
    for name in state["ema"]["shadow"]:
        assert torch.equal(weights[name], state["ema"]["shadow"][name])
        assert not torch.equal(weights[name], state["model"][name])
    for name in state["ema"]["buffers"]:
        assert torch.equal(weights[name], state["ema"]["buffers"][name])


def test_raw_weights_when_asked_or_when_there_is_no_ema() -> None:
    _, state = _state()
    for weights in (sampling_state_dict(state, "raw"), sampling_state_dict({"model": state["model"]})):
        assert weights.keys() == state["model"].keys()
        assert all(torch.equal(weights[k], v) for k, v in state["model"].items())


def test_bad_requests_are_refused() -> None:
    _, state = _state()
    with pytest.raises(ValueError, match="'ema' or 'raw'"):
        sampling_state_dict(state, "best")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="no model weights"):
        sampling_state_dict({"ema": state["ema"]}, "raw")


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_load_from_a_file_or_a_loaded_state(tmp_path: Path, weights: str) -> None:
    _, state = _state()
    path = tmp_path / "step_00000001.pt"
    save_checkpoint(path, state)
    expected = sampling_state_dict(state, weights)  # type: ignore[arg-type]
    for source in (path, str(path), state):
        model = _model()
        assert load_sampling_weights(model, source, weights) is model  # type: ignore[arg-type]
        _assert_loaded(model, expected)


def test_weights_that_do_not_fit_are_one_line_naming_the_file(tmp_path: Path) -> None:
    _, state = _state()
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    wider = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    for source, kwargs in ((path, {}), (state, {"path": path})):
        with pytest.raises(CheckpointError) as info:
            load_sampling_weights(wider, source, **kwargs)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(f"checkpoint {path} does not fit this model: ")
        assert "size mismatch for 0.weight" in message and "\n" not in message
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'none.pt'} does not exist"):
        load_sampling_weights(_model(), tmp_path / "none.pt")
