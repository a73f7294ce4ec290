import math

import pytest
import torch

from ntm.eval.metrics import energy_distance, median_pairwise_distance, mmd_rbf, oracle_log_density
from ntm.data.mixture import GaussianMixture
from ntm.eval.timing import measure

F64 = torch.float64




def _points(n, d=2, seed=0, shift=0.0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed)) + shift


def _dist(a, b):
    return (a[:, None, :] - b[None, :, :]).square().sum(-1).sqrt()


def _naive_energy(x, y, unbiased):
    dxy, dxx, dyy = _dist(x, y), _dist(x, x), _dist(y, y)
    n, m = len(x), len(y)
    xx = dxx.sum() / (n * (n - 1)) if unbiased else dxx.mean()
    yy = dyy.sum() / (m * (m - 1)) if unbiased else dyy.mean()
    return float(2 * dxy.mean() - xx - yy)


def _naive_mmd(x, y, bandwidths, unbiased):
    def k(a, b):
        d2 = (a[:, None, :] - b[None, :, :]).square().sum(-1)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return float(xx + yy - 2 * kxy.mean())


def test_energy_distance_of_identical_sets_is_zero_and_positive_when_shifted():
    x = _points(300)
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, x.clone().to(torch.float32)) == pytest.approx(0.0, abs=1e-6)
    near, far = energy_distance(x, _points(300, seed=1, shift=0.5)), energy_distance(x, _points(300, seed=1, shift=2.0))
    assert 0 < near < far


@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_distance_matches_the_dense_formula_for_any_chunking(unbiased):
    x, y = _points(57, d=3), _points(41, d=3, seed=2, shift=0.3)
    expected = _naive_energy(x, y, unbiased)
    assert energy_distance(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    assert energy_distance(x, y, unbiased=unbiased, chunk_size=5) == pytest.approx(expected, rel=1e-10)
    # the U-statistic of a set against itself is negative (diagonals dropped within, kept across)
    assert energy_distance(x, x, unbiased=True) < 0


def test_energy_distance_of_10k_points_stays_small_in_memory():
    x, y = _points(10_000, seed=3), _points(10_000, seed=4, shift=0.05)
    stats = measure(lambda: energy_distance(x, y), repeats=1, warmup=0)
    # a dense 10k x 10k float64 matrix alone would be 800 MB
    if stats["peak_mem_mb"] is not None:
        assert stats["peak_mem_mb"] < 200


def test_mmd_of_identical_sets_is_zero_and_grows_with_the_shift():
    x = _points(300)
    assert mmd_rbf(x, x) == 0.0
    y_near, y_far = _points(300, seed=1, shift=0.5), _points(300, seed=1, shift=2.0)
    assert 0 < mmd_rbf(x, y_near, bandwidths=(1.0,)) < mmd_rbf(x, y_far, bandwidths=(1.0,))
    assert mmd_rbf(x, y_near) > 0  # median-heuristic bandwidths


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_the_dense_formula(unbiased):
    x, y = _points(50, d=4), _points(70, d=4, seed=5, shift=0.4)
    bw = (0.5, 1.0, 3.0)
    expected = _naive_mmd(x, y, bw, unbiased)
    assert mmd_rbf(x, y, bw, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    assert mmd_rbf(x, y, bw, unbiased=unbiased, chunk_size=7) == pytest.approx(expected, rel=1e-10)
    med = median_pairwise_distance(x, y)
    default_bw = [med * s for s in (0.2, 0.5, 1.0, 2.0, 5.0)]
    assert mmd_rbf(x, y, unbiased=unbiased) == pytest.approx(_naive_mmd(x, y, default_bw, unbiased), rel=1e-10)


def test_bad_inputs_are_refused_with_clear_errors():
    x = _points(10)
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(x, _points(10, d=3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        mmd_rbf(x[0], x)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_rbf(x, x, bandwidths=(1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        energy_distance(x, torch.full((3, 2), math.nan))
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        mmd_rbf(torch.zeros(4, 2), torch.zeros(4, 2))


def test_oracle_log_density_prefers_samples_on_the_data_manifold():
    mix = GaussianMixture.ring(8, radius=2.0, std=0.2)
    gen = torch.Generator().manual_seed(0)
    good = mix.sample(4000, gen)
    shifted = good + torch.tensor([0.5, 0.0], dtype=F64)
    score = oracle_log_density(good, mix)
    assert score > oracle_log_density(shifted, mix) + 1.0
    assert score == pytest.approx(float(mix.log_prob(good).mean()), rel=1e-12)
    assert oracle_log_density(good, mix, batch_size=333) == pytest.approx(score, rel=1e-12)
    # the expected score of true samples is minus the mixture's entropy; well-separated ring: about
    # log 8 + the Gaussian entropy log(2 pi e s^2)
    entropy = math.log(8) + math.log(2 * math.pi * math.e * 0.04)
    assert score == pytest.approx(-entropy, abs=0.05)
    with pytest.raises(ValueError, match="dimension 3"):
        oracle_log_density(torch.zeros(5, 3), mix)


def test_mixture_density_integrates_to_one_on_a_grid():
    mix = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.5, -0.5]]), torch.tensor([0.2, 0.5]))
    grid = torch.linspace(-6, 6, 481, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    p = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], -1)).exp()
    assert (p.sum() * (grid[1] - grid[0]) ** 2).item() == pytest.approx(1.0, abs=1e-4)
