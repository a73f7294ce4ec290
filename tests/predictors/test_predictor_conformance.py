"""Conformance suite: every registered predictor, by name, meets the Predictor contract.

The checks live in :mod:`ntm.testing` (plugin authors run the same ones).
Each registered name is exercised through its default config shrunk to a
tiny network (``depth``, ``width``, ``num_heads`` wherever they appear,
nested configs included), plus the extra settings listed in ``EXTRA``; a
config class with a ``conformance_configs()`` classmethod supplies its own
list instead. A new variant is covered the moment it registers; so is a new
output head of the transformer predictors (``HEADS``), through its default config.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ntm import testing
from ntm.distributions import Gaussian
from ntm.predictors import HEADS, PREDICTORS, Predictor, PredictorConfig
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig

TINY = {"depth": 2, "width": 16, "num_heads": 2}
NETWORK_OPTIONS: list[dict] = [
    {"positions": "rope-2d"}, {"num_kv_heads": 1}, {"time": "additive"}, {"text": "concat"},
    {"positions": "rope-2d", "num_kv_heads": 1, "time": "additive", "text": "concat"},
]
"""The transformer predictors' network options (the paper's predictor, Table 4 / §C.1), each alone and all at once."""
EXTRA: dict[str, list[dict]] = {
    "posterior": [{"learned_scale": True}],
    "transformer": [{"parameterization": "direct"}, {"sigma": "posterior"}, *NETWORK_OPTIONS],
    "trajectory": NETWORK_OPTIONS,
}
"""Settings exercised on top of each name's tiny default config."""


def shrink(config: ComponentConfig) -> ComponentConfig:
    """``config`` with every ``depth`` / ``width`` / ``num_heads`` field (recursively) set to :data:`TINY`."""
    updates = {}
    for field in type(config).model_fields:
        value = getattr(config, field)
        if field in TINY:
            updates[field] = TINY[field]
        elif isinstance(value, ComponentConfig):
            updates[field] = shrink(value)
    return config.replace(**updates) if updates else config


def configs(name: str) -> list[ComponentConfig]:
    cls = PREDICTORS.get(name).config_cls
    if hasattr(cls, "conformance_configs"):
        return list(cls.conformance_configs())
    tiny = shrink(cls())
    return [tiny, *(tiny.replace(**extra) for extra in EXTRA.get(name, []))]


CASES = [pytest.param(name, i, id=f"{name}-{i}") for name in PREDICTORS.names() for i in range(len(configs(name)))]


@pytest.mark.parametrize("name, index", CASES)
def test_predictor_meets_the_contract(name, index):
    testing.check_predictor(configs(name)[index])


HEAD_CASES = [
    pytest.param(head, predictor, id=f"{predictor}-head-{head}")
    for head in HEADS.names() if head != "gaussian" for predictor in ("transformer", "trajectory")
]
"""Every registered head but the default (which the predictor cases above run) in both transformer predictors."""


@pytest.mark.parametrize("head, predictor", HEAD_CASES)
def test_every_registered_head_meets_the_contract(head, predictor):
    config = shrink(PREDICTORS.get(predictor).config_cls()).replace(head=HEADS.get(head).config_cls())
    testing.check_predictor(config)


def test_every_registered_predictor_is_exercised_tiny():
    for name in PREDICTORS.names():
        for config in configs(name):
            dump = PREDICTORS.dump(config)
            assert dump["name"] == name
            assert sum(p.numel() for p in config.build(ModelDims(3, 2, 4)).parameters()) < 100_000, name


def test_trajectory_predictor_sees_noisier_context_so_the_cache_check_is_not_vacuous():
    """Moving the noisiest level changes the cleanest prediction of the non-Markov predictor only."""
    for name in PREDICTORS.names():
        predictor = testing.build_predictor(configs(name)[0])
        u, times, cond = testing.predictor_inputs(testing.PREDICTOR_DIMS[0], 3)
        moved = u.clone()
        moved[-1] += 1.0
        with torch.no_grad():
            change = predictor.forward_trajectory(moved, times, cond).mu[0] - predictor.forward_trajectory(u, times, cond).mu[0]
        assert (change.abs().max().item() > 1e-6) == (not type(predictor).markov), name


# -- the checks catch broken predictors (never registered) --------------------------------------------------


class Broken(Predictor):
    """A linear predictor ``mu = w u_t``; the non-Markov flavour adds the mean of the noisier levels it has seen."""

    def __init__(self, bug: str, dims: ModelDims) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.bug = bug

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        mu = self.w * u_t
        if self.bug == "nan":
            mu = mu / 0.0 * 0.0
        if self.bug == "shape":
            mu = mu[:, :1]
        return Gaussian(mu, torch.zeros_like(mu))

    def forward_trajectory(self, u_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Gaussian:
        g = super().forward_trajectory(u_levels, times, cond)
        if self.bug == "not-batched":
            return g.map(lambda z: z + 1e-6)
        if self.bug in ("leak", "stale-cache"):
            # level k sees levels k..K (leak: all levels 1..K)
            k = u_levels.shape[0]
            context = [u_levels[(0 if self.bug == "leak" else j):].mean(0) for j in range(k)]
            return Gaussian(g.mu + torch.stack(context), g.log_sigma)
        return g

    def new_cache(self):
        return [] if self.bug in ("leak", "stale-cache") else None

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache) -> Gaussian:
        g = self(u_t, t, s, cond)
        if cache is None:
            return g
        cache.append(u_t)
        seen = torch.stack(cache).mean(0) if self.bug == "leak" else torch.stack(cache[-1:]).mean(0)
        return Gaussian(g.mu + seen, g.log_sigma)


class BrokenTrajectory(Broken):
    markov = False


class BrokenConfig(PredictorConfig):
    bug: str = "none"

    def build(self, dims: ModelDims) -> Broken:
        return (BrokenTrajectory if self.bug in ("leak", "stale-cache") else Broken)(self.bug, dims)


@pytest.mark.parametrize(
    "bug, check, message",
    [
        ("nan", testing.check_predictor_outputs, "non-finite"),
        ("shape", testing.check_predictor_outputs, r"forward.mu has shape \(4, 1, 2\), expected \(4, 3, 2\)"),
        ("not-batched", testing.check_predictor_trajectory, "forward_trajectory != cached step at level 3 of 3"),
        ("stale-cache", testing.check_predictor_trajectory, "teacher-forced forward_trajectory != cached step"),
        ("leak", testing.check_predictor_causality, "moving level u_1 changed predictions"),
    ],
)
def test_checks_catch_a_broken_predictor(bug, check, message):
    check(BrokenConfig())  # the healthy predictor passes
    with pytest.raises(AssertionError, match=message) as info:
        check(BrokenConfig(bug=bug))
    assert "predictor 'BrokenConfig'" in str(info.value)
