"""Conformance suite: every registered transporter, by name, meets the Transporter contract.

A new variant is tested the moment it registers (its config's
``conformance_configs()`` lists what to exercise). Weights are perturbed away
from the zero initialisation so the maps are far from the identity.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS
from tests.conftest import perturb_

CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name in TRANSPORTERS.names()
    for i in range(len(TRANSPORTERS.get(name).config_cls.conformance_configs()))
]

problems = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 4),
        "tokens": st.integers(1, 5),
        "channels": st.integers(1, 3),
        "num_classes": st.integers(0, 3),
        "seed": st.integers(0, 2**16),
    }
)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(name: str, index: int, p: dict, scale: float, dtype: torch.dtype):
    config = TRANSPORTERS.get(name).config_cls.conformance_configs()[index]
    dims = ModelDims(p["tokens"], p["channels"], p["num_classes"])
    torch.manual_seed(p["seed"])
    module = perturb_(config.build(dims), scale, p["seed"]).to(dtype).eval()
    gen = torch.Generator().manual_seed(p["seed"] + 1)
    x = torch.randn(p["batch"], p["tokens"], p["channels"], generator=gen, dtype=dtype)
    t = torch.rand(p["batch"], generator=gen, dtype=dtype) * 0.98 + 0.01
    cond = None
    if p["num_classes"]:
        cond = torch.randint(0, p["num_classes"] + 1, (p["batch"],), generator=gen)  # null label included
    return module, x, t, cond


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name, index", CASES)
@SETTINGS
@given(p=problems, scale=st.floats(0.0, 0.05))
def test_round_trip_float32(name, index, p, scale):
    module, x, t, cond = build(name, index, p, scale, torch.float32)
    with torch.no_grad():
        u, logdet = module(x, t, cond)
        assert u.shape == x.shape and u.dtype == x.dtype and logdet.shape == (x.shape[0],)
        assert rel_err(module.inverse(u, t, cond), x) < 1e-5


@pytest.mark.parametrize("name, index", CASES)
@SETTINGS
@given(p=problems, scale=st.floats(0.0, 0.1))
def test_round_trip_float64(name, index, p, scale):
    module, x, t, cond = build(name, index, p, scale, torch.float64)
    with torch.no_grad():
        u, _ = module(x, t, cond)
        assert rel_err(module.inverse(u, t, cond), x) < 1e-10
        # the map is a bijection both ways: forward(inverse(z)) == z too
        z = torch.randn_like(x)
        assert rel_err(module(module.inverse(z, t, cond), t, cond)[0], z) < 1e-10


@pytest.mark.parametrize("name, index", CASES)
@SETTINGS
@given(p=problems, scale=st.floats(0.0, 0.1))
def test_logdet_equals_slogdet_of_autograd_jacobian(name, index, p, scale):
    module, x, t, cond = build(name, index, p, scale, torch.float64)
    _, logdet = module(x, t, cond)
    for i in range(x.shape[0]):
        ci = None if cond is None else cond[i : i + 1]

        def f(z: torch.Tensor, i=i, ci=ci) -> torch.Tensor:
            return module(z.reshape(1, *x.shape[1:]), t[i : i + 1], ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i].reshape(-1))
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logdet[i].item() - expected.item()) < 1e-6


@pytest.mark.parametrize("name, index", CASES)
@SETTINGS
@given(p=problems, scale=st.floats(0.0, 0.1))
def test_every_inverse_method_agrees_with_the_default(name, index, p, scale):
    """KV-cached sequential, naive recomputing and Jacobi inverses all decode the same x."""
    module, x, t, cond = build(name, index, p, scale, torch.float64)
    with torch.no_grad():
        u, _ = module(x, t, cond)
        reference = module.inverse(u, t, cond)
        for method in type(module).inverse_methods:
            assert rel_err(module.inverse(u, t, cond, method=method), reference) < 1e-9, method


@pytest.mark.parametrize("name, index", CASES)
def test_fresh_transporter_is_identity(name, index):
    config = TRANSPORTERS.get(name).config_cls.conformance_configs()[index]
    module = config.build(ModelDims(4, 2, 3)).double()
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    u, logdet = module(x, torch.rand(3, dtype=torch.float64), torch.tensor([0, 1, 3]))
    assert torch.equal(u, x) and torch.all(logdet == 0)


def test_unknown_inverse_method_is_refused():
    module = TRANSPORTERS.get("tarflow").config_cls().build(ModelDims(3, 1))
    with pytest.raises(ValueError, match="unknown inverse method 'magic'"):
        module.inverse(torch.randn(2, 3, 1), torch.rand(2), method="magic")
