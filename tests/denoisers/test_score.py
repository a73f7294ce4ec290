import pytest
import torch

from ntm.eval.oracle import GaussianReversePredictor, posterior_mean
from ntm.data.mixture import GaussianMixture
from ntm.denoisers import DENOISERS, ScoreDenoiser
from ntm.forward import MarkovConfig
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
