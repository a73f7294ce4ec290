"""The ``logistic-mixture`` head (docs/math.md §12): the distribution's exact NLL and draws, the head's init, and the
head in models, sampling, score denoising and the CLI (guidance refused)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import distributions as dist

from ntm.experiments.cli import main
from ntm import testing
from ntm.denoisers import ScoreDenoiser
from ntm.distributions import LogisticMixture
from ntm.forward import MarkovConfig
from ntm.forward import interpolant as I
from ntm.model import NTMConfig
from ntm.predictors import (
    HEADS,
    PREDICTORS,
    LogisticMixtureHeadConfig,
    TrajectoryPredictorConfig,
    TransformerPredictorConfig,
)
from ntm.predictors.logistic_mixture_head import LOG_SCALE_MAX, LOG_SCALE_MIN, soft_clamp
from ntm.samplers import AncestralConfig
from ntm.samplers.guidance import GAUSSIAN_ONLY
from ntm.spec import ModelDims
from ntm.transporters import TarFlowConfig

F64 = torch.float64
TINY = {"depth": 2, "width": 16, "num_heads": 2}


def random_mixture(shape=(5, 3, 2), m=3, seed=0, dtype=F64) -> LogisticMixture:
    gen = torch.Generator().manual_seed(seed)
    full = (*shape, m)
    return LogisticMixture(torch.randn(full, generator=gen, dtype=dtype), 0.5 * torch.randn(full, generator=gen, dtype=dtype),
                           2 * torch.randn(full, generator=gen, dtype=dtype))


def reference_nll(mix: LogisticMixture, x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-log p(x)`` from torch.distributions in float64: logistic = affine(logit(Uniform(0, 1)))."""
    loc, scale, logits = mix.loc.to(F64), mix.log_scale.to(F64).exp(), mix.logits.to(F64)
    base = dist.Uniform(torch.zeros_like(loc), torch.ones_like(loc))
    logistic = dist.TransformedDistribution(base, [dist.SigmoidTransform().inv, dist.AffineTransform(loc, scale)])
    return -dist.MixtureSameFamily(dist.Categorical(logits=logits), logistic).log_prob(x.to(F64))


# -- the distribution ---------------------------------------------------------------------------------------------


def test_nll_is_the_torch_distributions_reference_in_float64_and_float32():
    mix = random_mixture()
    x = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = reference_nll(mix, x)
    torch.testing.assert_close(mix.nll(x), expected, rtol=1e-12, atol=1e-12)
    for batch_dims in (1, 2):
        torch.testing.assert_close(mix.nll_sum(x, batch_dims), expected.flatten(batch_dims).sum(-1), rtol=1e-12, atol=1e-12)
    low = mix.map(lambda z: z.float())
    got = low.nll_sum(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected.flatten(1).sum(-1), rtol=1e-5, atol=1e-5)
    far = low.nll(torch.full((5, 3, 2), 1e4))  # |z| ~ 1e4: the softplus form stays finite (and large)
    assert torch.isfinite(far).all() and (far > 1e3).all()


def test_density_integrates_to_one_on_a_grid():
    mix = LogisticMixture(torch.tensor([[-2.0, 0.5, 3.0]], dtype=F64), torch.tensor([[-1.0, 0.3, -0.2]], dtype=F64),
                          torch.tensor([[0.4, -1.0, 1.2]], dtype=F64))
    grid = torch.linspace(-60.0, 60.0, 240_001, dtype=F64)
    density = torch.exp(-mix.map(lambda z: z.expand(grid.numel(), 3)).nll(grid))
    total = torch.trapezoid(density, grid).item()
    assert abs(total - 1.0) < 1e-6, total
    assert mix.shape == (1,) and mix.num_components == 3


def test_one_component_is_a_single_logistic():
    gen = torch.Generator().manual_seed(2)
    loc, log_s = torch.randn(4, 3, 1, generator=gen, dtype=F64), 0.4 * torch.randn(4, 3, 1, generator=gen, dtype=F64)
    mix = LogisticMixture(loc, log_s, torch.randn(4, 3, 1, generator=gen, dtype=F64))  # one logit: any value, weight 1
    x = torch.randn(4, 3, generator=gen, dtype=F64)
    z = (x - loc[..., 0]) / log_s[..., 0].exp()
    explicit = z + log_s[..., 0] + 2 * torch.log1p(torch.exp(-z))  # -log of s^-1 e^-z / (1 + e^-z)^2
    torch.testing.assert_close(mix.nll(x), explicit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix.mean, loc[..., 0])
    torch.testing.assert_close(mix.variance, (2 * log_s[..., 0]).exp() * math.pi**2 / 3)
    # the draw: the component's uniform first, then the logistic's
    gen_a = torch.Generator().manual_seed(3)
    draw = mix.sample(1.0, gen_a)
    gen_b = torch.Generator().manual_seed(3)
    torch.rand(4, 3, generator=gen_b, dtype=F64)
    u = torch.rand(4, 3, generator=gen_b, dtype=F64)
    torch.testing.assert_close(draw, loc[..., 0] + log_s[..., 0].exp() * torch.log(u / (1 - u)), rtol=1e-12, atol=1e-12)


def test_draws_have_the_analytic_mean_and_variance():
    """n = 400k draws per coordinate; tolerances at 6 standard errors of the empirical moments."""
    n = 400_000
    base = LogisticMixture(torch.tensor([[-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]], dtype=F64),
                           torch.tensor([[-0.5, 0.0, -1.0], [-1.0, 0.0, 0.5]], dtype=F64),
                           torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.0, -1.0]], dtype=F64))
    mix = base.map(lambda z: z.expand(n, 2, 3))
    draws = mix.sample(1.0, torch.Generator().manual_seed(0))
    assert draws.shape == (n, 2)
    w = torch.softmax(base.logits, -1)
    mean = (w * base.loc).sum(-1)
    var = (w * (base.log_scale.exp() ** 2 * math.pi**2 / 3 + base.loc**2)).sum(-1) - mean**2
    torch.testing.assert_close(base.mean, mean)
    torch.testing.assert_close(base.variance, var)
    assert ((draws.mean(0) - mean).abs() < 6 * (var / n).sqrt()).all(), (draws.mean(0), mean)
    squares = (draws - mean).square()  # the sample variance's standard error: std((x - mean)^2) / sqrt(n)
    assert ((draws.var(0) - var).abs() < 6 * squares.std(0) / math.sqrt(n)).all(), (draws.var(0), var)


def test_temperature_scales_the_chosen_logistic_not_the_weights():
    """Far-apart, narrow components (one per coordinate): a draw names its component."""
    n = 100_000
    loc = torch.tensor([-10.0, 0.0, 10.0], dtype=F64).expand(n, 2, 3)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    mix = LogisticMixture(loc, torch.full_like(loc, math.log(0.1)), weights.log().expand(n, 2, 3))
    hot = mix.sample(1.0, torch.Generator().manual_seed(0))
    cold = mix.sample(0.5, torch.Generator().manual_seed(0))
    component = torch.round(hot / 10)
    assert torch.equal(torch.round(cold / 10), component)  # same uniforms, same components
    torch.testing.assert_close(cold - 10 * component, 0.5 * (hot - 10 * component), rtol=1e-12, atol=1e-12)
    freq = torch.stack([(component == c).double().mean(0) for c in (-1, 0, 1)], -1)  # (2, 3): per coordinate
    assert (freq - weights).abs().max().item() < 0.01, freq
    assert (component[:, 0] != component[:, 1]).double().mean() > 0.5  # a component per coordinate, not per example
    spread = (cold - 10 * component).std().item()
    assert abs(spread - 0.5 * 0.1 * math.pi / math.sqrt(3)) < 0.002  # tau s pi / sqrt(3)
    assert torch.isfinite(mix.sample(1e-3)).all()


def test_map_cat_and_param_shapes():
    mix = random_mixture((4, 3, 2), m=5)
    assert mix.shape == (4, 3, 2) and mix.num_components == 5
    assert mix.param_shapes((4, 3, 2)) == {name: (4, 3, 2, 5) for name in ("loc", "log_scale", "logits")}
    levels = mix.map(lambda z: z.unflatten(0, (2, 2)))
    assert levels.shape == (2, 2, 3, 2) and levels.nll_sum(torch.zeros(2, 2, 3, 2, dtype=F64), 2).shape == (2, 2)
    joined = LogisticMixture.cat([mix.map(lambda z: z[:1]), mix.map(lambda z: z[1:])])
    assert all(torch.equal(a, b) for a, b in zip(joined.params().values(), mix.params().values(), strict=True))
    assert mix.mean.shape == mix.variance.shape == (4, 3, 2)


# -- the head -------------------------------------------------------------------------------------------------------


def test_soft_clamp_is_the_identity_away_from_the_bounds_and_bounded():
    x = torch.tensor([-1e4, LOG_SCALE_MIN - 3, -3.0, 0.0, 1.0, LOG_SCALE_MAX + 3, 1e4], dtype=F64)
    y = soft_clamp(x)
    assert (y >= LOG_SCALE_MIN).all() and (y <= LOG_SCALE_MAX + 1e-7).all() and (y.diff() >= 0).all()
    assert (y[1:-1].diff() > 0).all() and y[0] == LOG_SCALE_MIN and abs(y[-1] - LOG_SCALE_MAX) < 1e-7
    torch.testing.assert_close(y[2:5], x[2:5], rtol=0, atol=3e-3)


@pytest.mark.parametrize("m", [1, 4])
def test_zero_initialised_head_has_the_gaussian_heads_mean_and_variance(m):
    dims = ModelDims(3, 2)
    head = LogisticMixtureHeadConfig(num_components=m).build(dims)
    assert head.raw_dim == 3 * m * 2
    gen = torch.Generator().manual_seed(0)
    u_t = torch.randn(4, 3, 2, generator=gen, dtype=F64)
    t, s = torch.tensor([0.3, 0.6, 0.9, 1.0], dtype=F64), torch.tensor([0.1, 0.3, 0.5, 0.05], dtype=F64)
    out = head(torch.zeros(4, 3, head.raw_dim, dtype=F64), u_t, t, s)
    assert isinstance(out, LogisticMixture) and out.shape == (4, 3, 2)
    _, c_t, var = I.posterior(s.reshape(-1, 1, 1), t.reshape(-1, 1, 1))
    torch.testing.assert_close(out.mean, c_t * u_t, rtol=0, atol=1e-12)
    # up to the soft clamp, which widens a scale s by about s e^-(log s - LOG_SCALE_MIN): 0.2 % at sigma_tilde = 0.05
    torch.testing.assert_close(out.variance, var.expand(4, 3, 2), rtol=5e-3, atol=0)
    assert torch.equal(out.logits, torch.zeros_like(out.logits))
    if m > 1:
        assert (out.loc.diff(dim=-1) > 0).all()  # the offsets spread the components


def test_components_receive_different_updates_from_the_zero_init():
    dims = ModelDims(2, 1)
    torch.manual_seed(0)
    model = NTMConfig(transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1),
                      predictor=TransformerPredictorConfig(**TINY, head=LogisticMixtureHeadConfig(num_components=3)),
                      process=MarkovConfig(steps=(2,))).build(dims).double()
    step_nlls, _, _ = model.trajectory_nll(torch.randn(64, 2, 1, dtype=F64), 2, generator=torch.Generator().manual_seed(0))
    step_nlls.mean().backward()
    grad = model.predictor.net.final.linear.weight.grad  # rows: x_hat (d, M), delta (d, M), logits (d, M)
    assert torch.isfinite(grad).all()
    for block in grad.reshape(3, 3, -1):  # x_hat, delta, logits rows of the three components
        assert (block[0] - block[1]).abs().max() > 1e-6 and (block[1] - block[2]).abs().max() > 1e-6


def test_head_meets_the_predictor_contract_and_round_trips():
    for cls in (TransformerPredictorConfig, TrajectoryPredictorConfig):
        testing.check_predictor(cls(**TINY, head=LogisticMixtureHeadConfig(num_components=3)))
    cfg = TransformerPredictorConfig(**TINY, head=LogisticMixtureHeadConfig(num_components=2))
    assert PREDICTORS.dump(cfg)["head"] == {"name": "logistic-mixture", "num_components": 2}
    assert PREDICTORS.load(PREDICTORS.dump(cfg)) == cfg and cfg.output_distribution() is LogisticMixture
    assert "logistic-mixture" in HEADS.names()
    with pytest.raises(ValueError, match="at least one component"):
        LogisticMixtureHeadConfig(num_components=0)


# -- models: sampling, score denoising, guidance, the CLI ---------------------------------------------------------


def test_sampling_score_denoising_and_the_guidance_refusal():
    cfg = NTMConfig(transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, use_condition=True),
                    predictor=TrajectoryPredictorConfig(**TINY, head=LogisticMixtureHeadConfig(num_components=3)),
                    process=MarkovConfig(steps=(3,)))
    model = testing.build_model(cfg, ModelDims(2, 1, 3), scale=0.1)
    labels = torch.tensor([0, 1, 2, 0] * 4)
    out = AncestralConfig().build()(model, 16, labels, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    again = AncestralConfig().build()(model, 16, labels, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (16, 2, 1) and torch.isfinite(out.x).all() and torch.equal(out.x, again.x)
    x_hat = ScoreDenoiser()(model, out.x_trajectory, out.times, labels)
    assert x_hat.shape == (16, 2, 1) and torch.isfinite(x_hat).all()
    AncestralConfig().check_model(cfg)  # unguided: fine
    with pytest.raises(ValueError, match=f"^{GAUSSIAN_ONLY}$"):
        AncestralConfig(guidance=1.5).check_model(cfg)
    with pytest.raises(TypeError, match="gaussian head only"):  # built by hand, past the config check
        AncestralConfig(guidance=1.5).build()(model, 4, labels[:4])


def test_cli_trains_samples_and_refuses_guidance_and_zero_components(tmp_path, capsys):
    assert main(["train", "digits-ntm", "predictor.head:logistic-mixture", "--dry-run"]) == 2  # the preset guides
    assert capsys.readouterr().err.strip().splitlines() == [f"ntm train: error: {GAUSSIAN_ONLY}"]
    assert main(["train", "toy-ntm", "predictor.head:logistic-mixture", "--predictor.head.num-components", "0",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_components" in err[0] and "at least one component" in err[0]
    run_dir = tmp_path / "lmix"
    args = ["train", "toy-ntm", "predictor.head:logistic-mixture", "--predictor.head.num-components", "3",
            "--run-dir", str(run_dir), "--train.steps", "3", "--train.sample-every", "0", "--train.warmup-steps", "0",
            "--train.log-every", "1", "--eval.num-examples", "64", "--eval.num-points", "64",
            "--predictor.width", "16", "--predictor.depth", "1", "--predictor.num-heads", "2",
            "--transporter.width", "16", "--transporter.num-heads", "2", "--transporter.num-blocks", "1",
            "--transporter.layers-per-block", "1"]
    assert main(args) == 0, capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["predictor"]["head"] == {"name": "logistic-mixture", "num_components": 3}
    assert math.isfinite(json.loads((run_dir / "final.json").read_text())["nll_traj_bpd"])
    capsys.readouterr()
    assert main(["sample", "--run", str(run_dir), "--steps", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file() and np.isfinite(np.load(tmp_path / "s.npy")).all()
    capsys.readouterr()
    assert main(["sample", "--run", str(run_dir), "--guidance", "1.5", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(GAUSSIAN_ONLY)
