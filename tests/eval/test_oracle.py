import math

import torch

from ntm.eval.oracle import _level_moments, posterior_mean, trajectory_log_prob, trajectory_nll
from ntm.data.mixture import GaussianMixture
from ntm.forward import MarkovConfig

F64 = torch.float64


def test_mixture_log_prob_integrates_to_one():
    mix = GaussianMixture.ring(8, radius=2.0, std=0.3)
    grid = torch.linspace(-4, 4, 401, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    p = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], -1)).exp()
    assert abs((p.sum() * (grid[1] - grid[0]) ** 2).item() - 1) < 1e-3


def test_trajectory_density_of_one_level_is_the_noisy_marginal():
    mix = GaussianMixture.ring(4, std=0.25)
    t = torch.tensor([0.3], dtype=F64)
    x = torch.randn(10, 2, dtype=F64)
    # x_t = 0.7 x + 0.3 eps: a mixture with means 0.7 m, variances 0.49 v + 0.09
    noisy = GaussianMixture(mix.weights, 0.7 * mix.means, 0.49 * mix.variances + 0.09)
    torch.testing.assert_close(trajectory_log_prob(mix, x[None], t), noisy.log_prob(x))


def test_trajectory_density_matches_monte_carlo_moments():
    mix = GaussianMixture.gaussian(torch.tensor([1.0, -2.0]), 0.4)
    process = MarkovConfig().build()
    times = process.times(3, dtype=F64)
    traj = process.sample_trajectory(mix.sample(100_000, torch.Generator().manual_seed(0)), times)
    # mean NLL of samples ~ entropy of the joint Gaussian of the first K levels
    a, cov = _level_moments(mix, times[:3])
    entropy = 2 * 0.5 * (torch.logdet(2 * math.pi * math.e * cov[0]))
    nll = trajectory_nll(mix, traj, times).mean()
    assert abs(nll.item() - entropy.item()) < 0.02


def test_posterior_mean_of_a_mixture_is_a_responsibility_weighted_average():
    mix = GaussianMixture.ring(2, radius=3.0, std=0.1)
    times = torch.tensor([0.05], dtype=F64)
    level = (0.95 * mix.means[:1])[None]  # exactly at the first component's noisy mean
    pm = posterior_mean(mix, level, times)
    assert torch.allclose(pm, mix.means[:1], atol=0.02)

