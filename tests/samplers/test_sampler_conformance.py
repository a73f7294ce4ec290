"""Conformance suite: every registered sampler, by name, meets the Sampler contract.

The checks live in :mod:`ntm.testing` (plugin authors run the same ones).
Each name runs its default config and, where the config has them, a guided,
tempered setting; the model is the first tiny NTM the config accepts
(asked through ``config.check_model``). A new sampler is covered the moment
it registers.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ntm import testing
from ntm.samplers import SAMPLERS, SampleOutput, Sampler
from ntm.registry import ComponentConfig

SETTINGS = {"guidance": 1.5, "temperature": 0.8}
"""Applied, where the config has the field, in the second case of each sampler."""


def configs(name: str) -> list[ComponentConfig]:
    default = SAMPLERS.get(name).config_cls()
    tuned = {k: v for k, v in SETTINGS.items() if k in type(default).model_fields}
    return [default, default.replace(**tuned)] if tuned else [default]


CASES = [pytest.param(name, i, id=f"{name}-{i}") for name in SAMPLERS.names() for i in range(len(configs(name)))]


@pytest.mark.parametrize("name, index", CASES)
def test_sampler_meets_the_contract(name, index):
    testing.check_sampler(configs(name)[index])


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_default_model_is_one_the_sampler_accepts(name):
    config = configs(name)[0]
    model = testing.default_sampler_model(config)
    assert model.dims == testing.MODEL_DIMS and model.dims.num_classes > 0  # labels get exercised
    if hasattr(config, "check_model"):
        accepted = [c for c in testing.tiny_model_configs() if _accepts(config, c)]
        assert accepted and type(model.predictor) is type(accepted[0].predictor.build(model.dims))


def _accepts(config, model_config) -> bool:
    try:
        config.check_model(model_config)
    except ValueError:
        return False
    return True


# -- the checks catch broken samplers (never registered) ----------------------------------------------------


class BrokenConfig(ComponentConfig):
    bug: str = "none"

    def build(self) -> "BrokenSampler":
        return BrokenSampler(self)


class BrokenSampler(Sampler):
    """``x = generator noise`` on a 3-level grid, with one defect per test."""

    def __init__(self, config: BrokenConfig) -> None:
        self.config = config

    def __call__(self, model, n: int, cond: Tensor | None = None, *, generator=None, return_trajectory=False):
        bug = self.config.bug
        shape = (n, model.dims.num_tokens, model.dims.token_dim)
        if bug == "ignores-generator":
            generator = None
        if bug == "fixed-noise":
            generator = torch.Generator().manual_seed(0)
        levels = torch.randn((3, *shape), generator=generator, dtype=torch.float64)
        if bug == "shape":
            levels = levels[:, :, :1]
        times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        out = SampleOutput(x=levels[0], times=times.flip(0) if bug == "times" else times, cond=cond)
        if return_trajectory:
            out.x_trajectory = levels.flip(0) if bug == "trajectory" else levels
            if bug == "trajectory-changes-x":
                out.x = out.x_trajectory[0] = levels[1]
        return out


@pytest.mark.parametrize(
    "bug, message",
    [
        ("shape", r"out.x has shape \(3, 1, 2\), expected \(3, 3, 2\)"),
        ("times", "not strictly ascending"),
        ("ignores-generator", "the same generator seed gave different samples"),
        ("fixed-noise", "different generator seeds gave identical samples"),
        ("trajectory", r"x_trajectory\[0\] != out.x"),
        ("trajectory-changes-x", "asking for the trajectory changed the sample"),
    ],
)
def test_checks_catch_a_broken_sampler(bug, message):
    model = testing.build_model(testing.tiny_model_configs()[0])
    testing.check_sampler(BrokenConfig(), model)  # the healthy sampler passes
    with pytest.raises(AssertionError, match=message) as info:
        testing.check_sampler(BrokenConfig(bug=bug), model)
    assert "sampler 'BrokenConfig'" in str(info.value)


def test_no_accepted_model_is_reported_with_every_refusal():
    class Picky(BrokenConfig):
        def check_model(self, model_config) -> None:
            raise ValueError("never")

    with pytest.raises(AssertionError, match="accepts none of the default tiny models") as info:
        testing.check_sampler(Picky())
    assert str(info.value).count("never") == len(testing.tiny_model_configs())
