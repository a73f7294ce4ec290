"""Flow-matching baseline: ODE samplers and the velocity loss against the analytic Gaussian velocity."""

import pytest
import torch
from torch import nn

from ntm.losses import FlowMatchingLoss
from ntm.model import NTMConfig
from ntm.predictors import (
    PosteriorPredictorConfig,
    TransformerPredictorConfig,
    VelocityPredictor,
    VelocityTransformerConfig,
)
from ntm.samplers import SAMPLERS, EulerConfig, EulerSampler, HeunSampler, nfe
from ntm.spec import ModelDims
from ntm.transporters import IdentityConfig

F64 = torch.float64
MEAN, VAR = torch.tensor([[1.0], [-2.0]], dtype=F64), 0.25


class ExactVelocity(nn.Module, VelocityPredictor):
    """The exact flow-matching velocity of Gaussian data N(MEAN, VAR): E[eps - x | x_t]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1, dtype=F64))

    def velocity(self, x_t, t, cond=None):
        t = t.reshape(-1, 1, 1)
        a, s = 1 - t, t
        x_hat = MEAN + a * VAR / (a**2 * VAR + s**2) * (x_t - a * MEAN)
        eps_hat = (x_t - a * x_hat) / s.clamp_min(1e-12)
        return eps_hat - x_hat


class AnalyticVelocity(nn.Module):
    """A model whose predictor gives the exact velocity (all the ODE samplers and the loss ask for)."""

    dims = ModelDims(2, 1)

    def __init__(self, predictor: VelocityPredictor | None = None) -> None:
        super().__init__()
        self.predictor = predictor or ExactVelocity()


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
    assert EulerSampler.nfe(4) == 4 and HeunSampler.nfe(4) == 7
    with pytest.raises(ValueError, match="not an ODE sampler"):
        nfe("ancestral", 4)


def test_trajectory_is_returned_clean_end_first():
    out = SAMPLERS.get("euler").config_cls(num_steps=3).build()(AnalyticVelocity(), 5, return_trajectory=True)
    assert out.x_trajectory.shape == (4, 5, 2, 1)
    assert torch.equal(out.x_trajectory[0], out.x) and out.times[0] == 0 and out.times[-1] == 1


def test_flow_matching_loss_is_minimised_by_the_true_velocity():
    model = AnalyticVelocity()
    x = (MEAN + VAR**0.5 * torch.randn(50_000, 2, 1, dtype=F64))
    loss = FlowMatchingLoss()

    class Shifted(ExactVelocity):
        def velocity(self, x_t, t, cond=None):
            return super().velocity(x_t, t, cond) + 0.1

    gen = torch.Generator().manual_seed(0)
    exact = loss(model, x, generator=gen).loss
    gen = torch.Generator().manual_seed(0)
    off = loss(AnalyticVelocity(Shifted()), x, generator=gen).loss
    assert abs(off.item() - exact.item() - 0.01) < 2e-3  # the excess is exactly |0.1|^2 per dimension


def test_flow_matching_model_is_an_ntm_with_a_velocity_posterior_predictor():
    cfg = NTMConfig(transporter=IdentityConfig(), predictor=PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16)))
    model = cfg.build(ModelDims(2, 1))
    x = torch.randn(8, 2, 1)
    out = FlowMatchingLoss()(model, x, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert out.metrics["fm_mse"].ndim == 0 and not out.metrics["fm_mse"].requires_grad
    plain = NTMConfig(transporter=IdentityConfig(), predictor=TransformerPredictorConfig(depth=1, width=16)).build(ModelDims(2, 1))
    for use in (lambda: FlowMatchingLoss()(plain, x), lambda: EulerConfig(num_steps=2).build()(plain, 2)):
        with pytest.raises(TypeError, match="TransformerPredictor gives no flow-matching velocity") as err:
            use()
        assert "\n" not in str(err.value)


def test_ode_guidance_is_cfg_on_the_velocity_in_one_batched_call():
    class Labelled(ExactVelocity):
        """Class c shifts the velocity by c; the null label (2) by -1. Records every call's batch."""

        def __init__(self):
            super().__init__()
            self.batches = []

        def velocity(self, x_t, t, cond=None):
            self.batches.append(x_t.shape[0])
            shift = torch.where(cond == 2, -1.0, cond.to(F64)).reshape(-1, 1, 1)
            return super().velocity(x_t, t) + shift

    model = AnalyticVelocity(Labelled())
    model.dims = ModelDims(2, 1, num_classes=2)
    cond = torch.tensor([0, 1, 1])
    w = 0.5
    guided = EulerConfig(num_steps=1, guidance=w).build()(model, 3, cond, generator=torch.Generator().manual_seed(0))
    assert model.predictor.batches == [6]  # both branches, one call
    x1 = torch.randn(3, 2, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    v_c = ExactVelocity().velocity(x1, torch.ones(3, dtype=F64)) + cond.to(F64).reshape(-1, 1, 1)
    v_u = ExactVelocity().velocity(x1, torch.ones(3, dtype=F64)) - 1.0
    torch.testing.assert_close(guided.x, x1 - (v_u + (1 + w) * (v_c - v_u)), rtol=0, atol=1e-12)
