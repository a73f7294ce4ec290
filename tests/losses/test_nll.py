"""Exactness of the trajectory NLL (docs/math.md §5, §10, §11)."""

import math

import pytest
import torch

from ntm.eval.oracle import GaussianReversePredictor, trajectory_nll
from ntm.data.mixture import GaussianMixture
from ntm.forward import MarkovConfig, interpolant
from ntm.losses import EndToEndLoss, PairWiseLoss, forward_log_prob, x0_bound_nats
from ntm.model import NTM, NTMConfig
from ntm.predictors import PosteriorPredictor, TransformerPredictorConfig, VelocityTransformerConfig
from ntm.spec import ModelDims
from ntm.transporters import IdentityTransporter, TarFlowConfig
from tests.conftest import perturb_

F64 = torch.float64


def gaussian_model(steps=(3,)):
    mean = torch.tensor([[0.5], [-1.0], [2.0]], dtype=F64)
    data = GaussianMixture.gaussian(mean.reshape(-1), 0.3)
    model = NTM(IdentityTransporter(), GaussianReversePredictor(mean, 0.3), MarkovConfig(steps=steps).build(), ModelDims(3, 1))
    return model.double(), data


def tarflow_model(steps=(1, 2, 4), num_classes=0):
    cfg = NTMConfig(
        transporter=TarFlowConfig(width=32, num_heads=2),
        predictor=TransformerPredictorConfig(depth=2, width=32),
        process=MarkovConfig(steps=steps),
    )
    torch.manual_seed(0)
    return perturb_(cfg.build(ModelDims(2, 1, num_classes)), 0.05, 0).double()


def test_identity_plus_posterior_predictor_is_the_analytic_gaussian_nll():
    torch.manual_seed(0)
    dims = ModelDims(3, 1)
    xhat = perturb_(VelocityTransformerConfig(depth=1, width=16).build(dims), 0.05, 0).double()
    model = NTM(IdentityTransporter(), PosteriorPredictor(xhat, dims), MarkovConfig(steps=(3,)).build(), dims).double()
    x = torch.randn(6, 3, 1, dtype=F64)
    step_nlls, traj, times = model.trajectory_nll(x, 3)
    for k in range(1, 4):
        s, t = times[k - 1], times[k]
        x_hat, _ = xhat(traj[k], t.expand(6))
        a, b2 = a_b = interpolant.transition(s, t)
        del a_b
        mean = (b2 / t**2) * (1 - s) * x_hat + (a * s**2 / t**2) * traj[k]
        std = (s**2 * b2 / t**2).sqrt()
        expected = -torch.distributions.Normal(mean, std).log_prob(traj[k - 1]).sum((1, 2))
        torch.testing.assert_close(step_nlls[:, k - 1], expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 3, 6])
def test_true_reverse_conditional_reproduces_the_oracle_trajectory_nll(steps):
    model, data = gaussian_model(steps=(steps,))
    x = data.sample(512, torch.Generator().manual_seed(1)).reshape(-1, 3, 1)
    step_nlls, traj, times = model.trajectory_nll(x, steps)
    oracle = trajectory_nll(data, traj.flatten(2), times)
    torch.testing.assert_close(step_nlls.sum(-1), oracle, rtol=1e-10, atol=1e-9)


def test_pair_wise_terms_average_to_the_end_to_end_value():
    model = tarflow_model(steps=(4,))
    x = torch.randn(5, 2, 1, dtype=F64)
    step_nlls, traj, times = model.trajectory_nll(x, 4)
    pairs = torch.stack(
        [model.pair_nll(traj[k - 1], traj[k], times[k - 1].expand(5), times[k].expand(5)) for k in range(1, 5)], dim=1
    )
    torch.testing.assert_close(pairs, step_nlls, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(4 * pairs.mean(1), step_nlls.sum(1))


def test_pair_wise_loss_is_unbiased_for_the_end_to_end_loss():
    model = tarflow_model(steps=(1, 2, 4))
    x = torch.randn(1, 2, 1, dtype=F64).expand(20_000, 2, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        e2e = EndToEndLoss()(model, x, generator=gen).loss
        pw = PairWiseLoss()(model, x, generator=gen).loss
    assert abs(e2e.item() - pw.item()) < 0.05 * abs(e2e.item()) + 0.05


def test_one_step_model_is_a_normalised_flow_on_x_t0():
    """K = 1: exp(-l_1) is a density over x_{t_0} (integrates to 1 on a grid)."""
    model = tarflow_model(steps=(1,))
    times = model.process.times(1, dtype=F64)
    grid = torch.linspace(-6, 6, 241, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], -1).reshape(-1, 2, 1)
    noise = torch.randn(1, 2, 1, dtype=F64).expand_as(pts)
    with torch.no_grad():
        nll = model.step_nlls(torch.stack([pts, noise]), times)[:, 0]
    mass = torch.exp(-nll).sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass.item() - 1.0) < 2e-3


def test_x0_bound_is_an_upper_bound_on_the_oracle_nll():
    model, data = gaussian_model(steps=(3,))
    x = data.sample(4000, torch.Generator().manual_seed(2)).reshape(-1, 3, 1)
    step_nlls, traj, times = model.trajectory_nll(x, 3)
    bound = x0_bound_nats(step_nlls, traj, times).mean()
    exact = trajectory_nll(data, traj[:2].flatten(2), times[[0, -1]]).mean()  # -log p(x_{t_0})
    assert bound.item() >= exact.item() - 0.05
    # the forward term is the log-density of the Markov transitions
    a, b2 = interpolant.transition(times[0], times[1])
    manual = torch.distributions.Normal(a * traj[0], b2.sqrt()).log_prob(traj[1]).sum((1, 2))
    a, b2 = interpolant.transition(times[1], times[2])
    manual += torch.distributions.Normal(a * traj[1], b2.sqrt()).log_prob(traj[2]).sum((1, 2))
    torch.testing.assert_close(forward_log_prob(traj, times), manual)


def test_losses_report_per_dimension_and_per_k():
    model = tarflow_model(steps=(1, 2, 4))
    out = EndToEndLoss()(model, torch.randn(64, 2, 1, dtype=F64), generator=torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and out.loss.requires_grad
    assert {"nll_traj_bpd", "bound_bpd", "nll_bpd/K1", "nll_bpd/K2", "nll_bpd/K4"} <= out.metrics.keys()
    assert out.metrics["nll_traj_bpd"].item() == out.loss.item() / math.log(2)  # as the host-side division was
    pw = PairWiseLoss()(model, torch.randn(64, 2, 1, dtype=F64), generator=torch.Generator().manual_seed(0))
    assert pw.metrics["nll_traj_bpd"].item() == pw.loss.item() / math.log(2)
    for value in (*out.metrics.values(), *pw.metrics.values()):  # detached 0-dim tensors: no host sync per call
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad


def test_pair_wise_refuses_trajectory_predictor():
    from ntm.predictors import TrajectoryPredictorConfig

    cfg = NTMConfig(predictor=TrajectoryPredictorConfig(depth=1, width=16), transporter=TarFlowConfig(width=16, num_heads=2))
    model = cfg.build(ModelDims(2, 1))
    with pytest.raises(ValueError, match="Markov predictor"):
        PairWiseLoss()(model, torch.randn(4, 2, 1))
