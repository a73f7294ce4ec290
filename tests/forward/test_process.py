import pytest
import torch

from ntm.forward import (
    SCHEDULES,
    ExplicitConfig,
    MarkovConfig,
    ScheduleError,
    ShiftedConfig,
    UniformConfig,
    interpolant,
    validate_times,
)

F64 = torch.float64
TIMES = torch.tensor([0.05, 0.2, 0.45, 0.8, 1.0], dtype=F64)


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_every_schedule_is_valid(name, k):
    schedule = SCHEDULES.get(name).config_cls().build()
    if not schedule.supports(k):
        with pytest.raises(ScheduleError):
            schedule.times(k)
        return
    times = schedule.times(k)
    assert times.shape == (k + 1,)
    assert times[0] > 0 and times[-1] == 1 and (times.diff() > 0).all()


@pytest.mark.parametrize(
    "times, message",
    [([0.0, 0.5, 1.0], "t_0 must be > 0"), ([0.1, 0.5, 0.4, 1.0], "strictly increasing"),
     ([0.1, 0.5, 0.9], "t_K must be 1"), ([0.1, 0.1, 1.0], "strictly increasing"), ([1.0], "at least two")],
)
def test_invalid_schedules_are_refused(times, message):
    with pytest.raises(ScheduleError, match=message):
        validate_times(torch.tensor(times))
    with pytest.raises(ValueError, match=message):
        ExplicitConfig(times=tuple(times))


def test_shifted_and_uniform_configs_validate_fields():
    with pytest.raises(ValueError, match="t_min"):
        UniformConfig(t_min=0.0)
    with pytest.raises(ValueError, match="shift"):
        ShiftedConfig(shift=-1.0)
    with pytest.raises(ValueError, match="steps"):
        MarkovConfig(steps=(0, 2))
    # a shift > 1 spends more of the levels near noise
    assert (ShiftedConfig(shift=3.0).build().times(4) >= UniformConfig().build().times(4) - 1e-12).all()


def test_per_example_steps_drawn_from_the_set():
    process = MarkovConfig(steps=(1, 2, 4, 8)).build()
    draws = process.sample_num_steps(4000, torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {1, 2, 4, 8}
    freq = torch.bincount(draws)[[1, 2, 4, 8]] / 4000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.03)


def test_transition_keeps_marginals():
    s, t = TIMES[:-1], TIMES[1:]
    a, b2 = interpolant.transition(s, t)
    # Var(x_t | x) = a^2 sigma_s^2 + b^2 must equal sigma_t^2, mean a alpha_s = alpha_t
    assert torch.allclose(a**2 * interpolant.sigma(s) ** 2 + b2, interpolant.sigma(t) ** 2)
    assert torch.allclose(a * interpolant.alpha(s), interpolant.alpha(t))
    a_last, b2_last = interpolant.transition(TIMES[-2], TIMES[-1])
    assert a_last == 0 and b2_last == 1


def test_monte_carlo_marginals_and_covariance():
    process = MarkovConfig().build()
    gen = torch.Generator().manual_seed(1)
    x = torch.tensor([0.7, -1.3], dtype=F64)
    n = 200_000
    traj = process.sample_trajectory(x.expand(n, 2), TIMES, gen)  # (K+1, n, 2)
    mean = traj.mean(1)
    expected_mean = interpolant.alpha(TIMES)[:, None] * x
    assert torch.allclose(mean, expected_mean, atol=0.01)
    for d in range(2):
        emp_cov = torch.cov(traj[:, :, d])
        assert torch.allclose(emp_cov, process.covariance(TIMES), atol=0.01)
    # Sigma_ii = sigma_t^2 and the pure-noise level is independent of the rest
    sigma = process.covariance(TIMES)
    assert torch.allclose(sigma.diagonal(), TIMES**2)
    assert torch.all(sigma[-1, :-1] == 0)


def test_sample_pair_has_trajectory_joint_law():
    process = MarkovConfig().build()
    gen = torch.Generator().manual_seed(2)
    n = 200_000
    x = torch.full((n, 1), 0.4, dtype=F64)
    s = torch.full((n,), 0.2, dtype=F64)
    t = torch.full((n,), 0.45, dtype=F64)
    x_s, x_t = process.sample_pair(x, s, t, gen)
    cov = torch.cov(torch.stack([x_s[:, 0], x_t[:, 0]]))
    expected = process.covariance(torch.tensor([0.2, 0.45], dtype=F64))
    assert torch.allclose(cov, expected, atol=0.01)


def test_posterior_matches_monte_carlo_given_fixed_x_and_xt():
    """Importance-weight draws of x_s ~ q(x_s | x) by q(x_t* | x_s): their moments are q(x_s | x_t*, x)."""
    process = MarkovConfig().build()
    gen = torch.Generator().manual_seed(3)
    s, t = torch.tensor(0.3, dtype=F64), torch.tensor(0.7, dtype=F64)
    x, x_t = torch.tensor([1.2], dtype=F64), torch.tensor([0.1], dtype=F64)
    n = 400_000
    x_s = interpolant.alpha(s) * x + interpolant.sigma(s) * torch.randn(n, 1, generator=gen, dtype=F64)
    a, b2 = interpolant.transition(s, t)
    logw = -0.5 * (x_t - a * x_s).square().sum(-1) / b2
    w = torch.softmax(logw, 0)
    mc_mean = (w[:, None] * x_s).sum(0)
    mc_var = (w[:, None] * (x_s - mc_mean).square()).sum(0)
    mean, var = process.posterior(x, x_t, s, t)
    assert torch.allclose(mc_mean, mean, atol=0.01)
    assert torch.allclose(mc_var, var.expand(1), rtol=0.03)
    # at t = 1 the posterior is alpha_s x with variance sigma_s^2
    mean1, var1 = process.posterior(x, x_t, s, torch.tensor(1.0, dtype=F64))
    assert torch.allclose(mean1, interpolant.alpha(s) * x) and torch.allclose(var1, interpolant.sigma(s) ** 2)
