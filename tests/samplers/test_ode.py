"""Flow-matching baseline: ODE samplers and the velocity loss against the analytic Gaussian velocity."""

import pytest
import torch
from torch import nn

from ntm.losses import FlowMatchingLoss
from ntm.model import NTMConfig
from ntm.predictors import PosteriorPredictorConfig, VelocityTransformerConfig
from ntm.samplers import SAMPLERS, nfe
from ntm.spec import ModelDims
from ntm.transporters import IdentityConfig

F64 = torch.float64
MEAN, VAR = torch.tensor([[1.0], [-2.0]], dtype=F64), 0.25


class AnalyticVelocity(nn.Module):
    """The exact flow-matching velocity of Gaussian data N(MEAN, VAR): E[eps - x | x_t]."""

    dims = ModelDims(2, 1)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1, dtype=F64))

    def velocity(self, x_t, t, cond=None):
        t = t.reshape(-1, 1, 1)
        a, s = 1 - t, t
        x_hat = MEAN + a * VAR / (a**2 * VAR + s**2) * (x_t - a * MEAN)
        eps_hat = (x_t - a * x_hat) / s.clamp_min(1e-12)
        return eps_hat - x_hat


@pytest.mark.parametrize("method, steps", [("euler", 200), ("heun", 20)])
def test_ode_samplers_reach_the_data_distribution(method, steps):
    sampler = SAMPLERS.get(method).config_cls(num_steps=steps).build()
    out = sampler(AnalyticVelocity(), 20_000, generator=torch.Generator().manual_seed(0))
    x = out.x.flatten(1)
    torch.testing.assert_close(x.mean(0), MEAN.flatten(), atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), VAR, dtype=F64), atol=0.02, rtol=0)


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    model = AnalyticVelocity()
    errs = {}
    for method in ("euler", "heun"):
        out = SAMPLERS.get(method).config_cls(num_steps=4).build()(model, 20_000, generator=torch.Generator().manual_seed(1))
        errs[method] = (out.x.flatten(1).var(0) - VAR).abs().max().item()
    assert errs["heun"] < errs["euler"]
    assert nfe("euler", 4) == 4 and nfe("heun", 4) == 7


def test_trajectory_is_returned_clean_end_first():
    out = SAMPLERS.get("euler").config_cls(num_steps=3).build()(AnalyticVelocity(), 5, return_trajectory=True)
    assert out.x_trajectory.shape == (4, 5, 2, 1)
    assert torch.equal(out.x_trajectory[0], out.x) and out.times[0] == 0 and out.times[-1] == 1


def test_flow_matching_loss_is_minimised_by_the_true_velocity():
    model = AnalyticVelocity()
    x = (MEAN + VAR**0.5 * torch.randn(50_000, 2, 1, dtype=F64))
    loss = FlowMatchingLoss()

    class Shifted(AnalyticVelocity):
        def velocity(self, x_t, t, cond=None):
            return super().velocity(x_t, t, cond) + 0.1

    gen = torch.Generator().manual_seed(0)
    exact = loss(model, x, generator=gen).loss
    gen = torch.Generator().manual_seed(0)
    off = loss(Shifted(), x, generator=gen).loss
    assert abs(off.item() - exact.item() - 0.01) < 2e-3  # the excess is exactly |0.1|^2 per dimension


def test_flow_matching_model_is_an_ntm_with_a_velocity_posterior_predictor():
    cfg = NTMConfig(transporter=IdentityConfig(), predictor=PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16)))
    model = cfg.build(ModelDims(2, 1))
    x = torch.randn(8, 2, 1)
    out = FlowMatchingLoss()(model, x, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(NotImplementedError, match="flow matching needs predictor:posterior"):
        NTMConfig().build(ModelDims(2, 1)).velocity(x, torch.rand(8))
