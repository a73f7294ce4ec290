import numpy as np
import pydantic
import pytest
import torch

from ntm.eval.oracle import GaussianReversePredictor, posterior_mean
from ntm.data.mixture import GaussianMixture
from ntm.denoisers import DENOISERS, ScoreDenoiser
from ntm.denoisers.score import ScoreDenoiserConfig, percentile_clip, percentile_threshold
from ntm.forward import MarkovConfig, interpolant
from ntm.model import NTM
from ntm.spec import ModelDims
from ntm.transporters import IdentityTransporter

F64 = torch.float64


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_score_denoising_returns_the_exact_posterior_mean_for_gaussian_data(steps):
    mean = torch.tensor([[0.8], [-1.2], [0.1]], dtype=F64)
    data = GaussianMixture.gaussian(mean.reshape(-1), 0.02)
    model = NTM(IdentityTransporter(), GaussianReversePredictor(mean, 0.02), MarkovConfig(steps=(steps,)).build(), ModelDims(3, 1)).double()
    x = data.sample(4000, torch.Generator().manual_seed(0)).reshape(-1, 3, 1)
    _, traj, times = model.trajectory_nll(x, steps)
    x_hat = ScoreDenoiser()(model, traj, times)
    exact = posterior_mean(data, traj[:steps].flatten(2), times[:steps])
    torch.testing.assert_close(x_hat.flatten(1), exact, rtol=1e-9, atol=1e-9)
    # and it is a real correction: closer to the clean x than the rescaled noisy sample
    assert (x_hat - x).square().mean() < (traj[0] / (1 - times[0]) - x).square().mean()


def test_none_denoiser_returns_x_t0():
    traj = torch.randn(3, 2, 4, 1)
    out = DENOISERS.get("none").config_cls().build()(None, traj, torch.tensor([0.1, 0.5, 1.0]))
    assert torch.equal(out, traj[0])


# -- percentile gradient clipping (paper Algorithm 3, line 4) ---------------------------------------------------------
def _gaussian_problem(steps: int, n: int = 64):
    """A model whose trajectory gradient varies over elements and examples: exact Gaussian reverse steps, data
    centred away from the predictor's mean so that the score is far from zero."""
    mean = torch.tensor([[0.8], [-1.2], [0.1]], dtype=F64)
    model = NTM(IdentityTransporter(), GaussianReversePredictor(mean, 0.02), MarkovConfig(steps=(steps,)).build(),
                ModelDims(3, 1)).double()
    data = GaussianMixture.gaussian(torch.tensor([2.0, 0.5, -1.5], dtype=F64), 0.5)
    x = data.sample(n, torch.Generator().manual_seed(1)).reshape(-1, 3, 1)
    _, traj, times = model.trajectory_nll(x, steps)
    return model, traj, times


def _trajectory_grad(model, traj, times):
    """The gradient the denoiser takes: of the summed step NLLs w.r.t. levels t_0 .. t_{K-1}, ``(K, B, N, d)``."""
    steps = times.numel() - 1
    x_levels = traj[:steps].detach().requires_grad_(True)
    total = model.step_nlls(torch.cat([x_levels, traj[steps:]]), times, None).sum()
    return torch.autograd.grad(total, x_levels)[0]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_clip_off_is_todays_output_bit_for_bit(steps):
    model, traj, times = _gaussian_problem(steps)
    today = ScoreDenoiser()(model, traj, times)
    assert ScoreDenoiserConfig().clip_percentile is None
    assert torch.equal(ScoreDenoiserConfig().build()(model, traj, times), today)
    assert torch.equal(DENOISERS.get("score").config_cls(clip_percentile=None).build()(model, traj, times), today)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_clip_at_percentile_100_is_no_clip(steps):
    model, traj, times = _gaussian_problem(steps)
    assert torch.equal(ScoreDenoiserConfig(clip_percentile=100).build()(model, traj, times),
                       ScoreDenoiser()(model, traj, times))


@pytest.mark.parametrize("percentile", [0.5, 10.0, 50.0, 90.0, 99.0])
def test_clipped_gradient_stays_within_each_examples_percentile(percentile):
    model, traj, times = _gaussian_problem(4)
    grad = _trajectory_grad(model, traj, times)
    clipped = percentile_clip(grad, percentile)
    per_example = grad.abs().transpose(0, 1).reshape(grad.shape[1], -1).numpy()
    tau = torch.from_numpy(np.percentile(per_example, percentile, axis=1))  # numpy's default (linear) percentile
    torch.testing.assert_close(percentile_threshold(grad, percentile), tau, rtol=1e-14, atol=0)
    assert (clipped.abs() <= tau.reshape(1, -1, 1, 1) * (1 + 1e-14)).all()  # numpy's value, to its last bits
    bound = percentile_threshold(grad, percentile).reshape(1, -1, 1, 1)
    assert (clipped.abs() <= bound).all()
    # elements within the threshold are kept as they are, the others land on it with their sign
    inside = grad.abs() <= bound
    assert torch.equal(clipped[inside], grad[inside])
    torch.testing.assert_close(clipped[~inside], (grad.sign() * bound).expand_as(grad)[~inside], rtol=0, atol=0)
    assert (~inside).any() and inside.any()
    # the threshold is each example's own: the examples' thresholds differ
    assert tau.unique().numel() > 1
    # and the denoiser applies exactly this clipped gradient
    sigma = interpolant.trajectory_covariance(times[:4])
    expected = (traj[0] - torch.einsum("j,j...->...", sigma[0], clipped)) / (1 - times[0])
    out = ScoreDenoiserConfig(clip_percentile=percentile).build()(model, traj, times)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("percentile", [5.0, 50.0, 95.0])
def test_no_element_of_the_applied_update_exceeds_the_percentile(percentile):
    """K = 1: the update to x_{t_0} is Sigma_00 times the (clipped) score, element for element."""
    model, traj, times = _gaussian_problem(1)
    grad = _trajectory_grad(model, traj, times)
    tau = torch.from_numpy(np.percentile(grad.abs().transpose(0, 1).reshape(grad.shape[1], -1).numpy(), percentile,
                                         axis=1)).reshape(-1, 1, 1)
    out = ScoreDenoiserConfig(clip_percentile=percentile).build()(model, traj, times)
    update = (out * (1 - times[0]) - traj[0]) / times[0] ** 2  # (x_hat alpha_0 - x_{t_0}) / Sigma_00 = -clipped grad
    assert (update.abs() <= tau * (1 + 1e-9)).all()
    unclipped = (ScoreDenoiser()(model, traj, times) * (1 - times[0]) - traj[0]) / times[0] ** 2
    assert (unclipped.abs() > tau * (1 + 1e-6)).any()  # the clip did something


@pytest.mark.parametrize("bad", [0.0, -5.0, 100.5, 1e9])
def test_clip_percentile_outside_0_100_is_one_line(bad):
    with pytest.raises(pydantic.ValidationError) as info:
        ScoreDenoiserConfig(clip_percentile=bad)
    (error,) = info.value.errors()
    assert error["loc"] == ("clip_percentile",)
    assert "\n" not in error["msg"] and "clip_percentile must be a percentile in (0, 100]" in error["msg"]
    for non_finite in (float("inf"), float("nan")):
        with pytest.raises(pydantic.ValidationError, match="finite"):
            ScoreDenoiserConfig(clip_percentile=non_finite)
    assert ScoreDenoiserConfig(clip_percentile=1e-3).clip_percentile == 1e-3
