"""Output heads (docs/math.md §5, §12): the mixture distribution, the head slot, and the analytic mixture oracle."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ntm.eval.oracle import posterior_mean, trajectory_nll
from ntm.experiments.cli import main
from ntm import testing
from ntm.data.mixture import GaussianMixture
from ntm.denoisers import ScoreDenoiser
from ntm.distributions import Gaussian, Mixture
from ntm.forward import MarkovConfig
from ntm.model import NTM, NTMConfig
from ntm.predictors import (
    HEADS,
    PREDICTORS,
    GaussianHeadConfig,
    MixtureHeadConfig,
    TrajectoryPredictorConfig,
    TransformerPredictorConfig,
)
from ntm.samplers import AncestralConfig
from ntm.spec import ModelDims
from ntm.testing.mixture_posterior import MixtureReversePredictor
from ntm.transporters import IdentityTransporter, TarFlowConfig

F64 = torch.float64
TINY = {"depth": 2, "width": 16, "num_heads": 2}


def random_mixture(lead=(5,), m=3, event=(3, 2), seed=0) -> Mixture:
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, m, *event)
    return Mixture(torch.randn(shape, generator=gen, dtype=F64), 0.3 * torch.randn(shape, generator=gen, dtype=F64),
                   2 * torch.randn(*lead, m, generator=gen, dtype=F64))


# -- the mixture distribution ------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(5,), (2, 4)])
def test_mixture_nll_is_the_brute_force_log_sum_exp(lead):
    mix = random_mixture(lead)
    x = torch.randn(*lead, 3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    got = mix.nll_sum(x, batch_dims=len(lead))
    flat_mu, flat_ls, flat_logits = mix.mu.flatten(0, len(lead) - 1), mix.log_sigma.flatten(0, len(lead) - 1), \
        mix.logits.flatten(0, len(lead) - 1)
    expected = []
    for b, xb in enumerate(x.flatten(0, len(lead) - 1)):
        log_norm = math.log(sum(math.exp(v) for v in flat_logits[b].tolist()))
        terms = []
        for j in range(3):
            logp = torch.distributions.Normal(flat_mu[b, j], flat_ls[b, j].exp()).log_prob(xb).sum().item()
            terms.append(flat_logits[b, j].item() - log_norm + logp)
        top = max(terms)
        expected.append(-(top + math.log(sum(math.exp(v - top) for v in terms))))
    torch.testing.assert_close(got.flatten(), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert got.shape == lead
    with pytest.raises(ValueError, match="leading dims"):
        mix.nll_sum(x, batch_dims=len(lead) + 1)


def test_mixture_map_cat_mean_and_shapes():
    mix = random_mixture((4,))
    assert mix.shape == (4, 3, 2) and mix.num_components == 3
    assert mix.param_shapes((4, 3, 2)) == {"mu": (4, 3, 3, 2), "log_sigma": (4, 3, 3, 2), "logits": (4, 3)}
    halves = [mix.map(lambda z: z[:2]), mix.map(lambda z: z[2:])]
    joined = Mixture.cat(halves)
    assert all(torch.equal(a, b) for a, b in zip(joined.params().values(), mix.params().values(), strict=True))
    weights = torch.softmax(mix.logits, -1)
    torch.testing.assert_close(mix.mean, torch.einsum("bj,bjnd->bnd", weights, mix.mu))


def test_component_frequencies_match_the_weights():
    """Far-apart, narrow components: a draw names its component. n = 200k puts the tolerance 0.01 at > 8 sigma."""
    n, weights = 200_000, torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    means = torch.tensor([-10.0, 0.0, 10.0], dtype=F64).reshape(1, 3, 1, 1).expand(n, 3, 2, 1)
    mix = Mixture(means, torch.full_like(means, math.log(0.1)), weights.log().expand(n, 3))
    draws = mix.sample(1.0, torch.Generator().manual_seed(0))
    assert draws.shape == (n, 2, 1)
    component = torch.round(draws[:, 0, 0] / 10).long() + 1
    assert torch.equal(component, torch.round(draws[:, 1, 0] / 10).long() + 1)  # one index for the whole state
    freq = torch.bincount(component, minlength=3).to(F64) / n
    assert (freq - weights).abs().max().item() < 0.01, freq
    # the temperature scales the spread within a component, not the weights
    cold = mix.sample(0.5, torch.Generator().manual_seed(0))
    spread = (cold - torch.round(cold / 10) * 10).std().item()
    assert abs(spread - 0.05) < 0.002
    assert torch.equal(torch.round(cold / 10), torch.round(draws / 10))  # same uniforms, same components


# -- the heads ----------------------------------------------------------------------------------------------


def test_one_component_mixture_head_is_the_gaussian_head_exactly():
    dims = ModelDims(3, 2)
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 3, 2 * 2 + 1, generator=gen, dtype=F64)
    u_t, u_s = torch.randn(4, 3, 2, generator=gen, dtype=F64), torch.randn(4, 3, 2, generator=gen, dtype=F64)
    t, s = torch.full((4,), 0.6, dtype=F64), torch.full((4,), 0.3, dtype=F64)
    mix = MixtureHeadConfig(num_components=1).build(dims)(raw, u_t, t, s)
    gauss = GaussianHeadConfig().build(dims)(raw[..., :4], u_t, t, s)
    assert isinstance(mix, Mixture) and isinstance(gauss, Gaussian)
    assert torch.equal(mix.mu[:, 0], gauss.mu) and torch.equal(mix.log_sigma[:, 0], gauss.log_sigma)
    assert torch.equal(mix.nll_sum(u_s), gauss.nll_sum(u_s))
    assert torch.equal(mix.mean, gauss.mean)


def test_one_component_mixture_predictor_matches_the_gaussian_predictor():
    dims = ModelDims(3, 2, 4)
    gauss = testing.build_predictor(TransformerPredictorConfig(**TINY), dims)
    mix = TransformerPredictorConfig(**TINY, head=MixtureHeadConfig(num_components=1)).build(dims).double().eval()
    state = gauss.state_dict()
    extra = torch.randn(1, 16, dtype=F64)  # the logit row: irrelevant with one component
    state["net.final.linear.weight"] = torch.cat([state["net.final.linear.weight"], extra])
    state["net.final.linear.bias"] = torch.cat([state["net.final.linear.bias"], torch.ones(1, dtype=F64)])
    mix.load_state_dict(state)
    u, times, cond = testing.predictor_inputs(dims, 3)
    with torch.no_grad():
        a, b = gauss.forward_trajectory(u, times, cond), mix.forward_trajectory(u, times, cond)
    torch.testing.assert_close(b.nll_sum(u, 2), a.nll_sum(u, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [TransformerPredictorConfig, TrajectoryPredictorConfig])
def test_zero_initialised_mixture_head_has_the_gaussian_heads_density(cls):
    dims = ModelDims(3, 2, 4)
    torch.manual_seed(0)
    gauss = cls(**TINY).build(dims).double()
    mix = cls(**TINY, head=MixtureHeadConfig(num_components=4)).build(dims).double()
    u, times, cond = testing.predictor_inputs(dims, 3)
    with torch.no_grad():
        a, b = gauss.forward_trajectory(u, times, cond), mix.forward_trajectory(u, times, cond)
    for j in range(4):  # equal components, each the Gaussian head's, and uniform weights
        assert torch.equal(b.mu[:, :, j], a.mu) and torch.equal(b.log_sigma[:, :, j], a.log_sigma)
    assert torch.equal(b.logits, torch.zeros_like(b.logits))
    torch.testing.assert_close(b.nll_sum(u, 2), a.nll_sum(u, 2), rtol=1e-14, atol=1e-12)


def test_mixture_components_separate_after_one_update():
    """From the zero init every component is the same; the read-out gains make their first updates differ."""
    dims = ModelDims(2, 1)
    torch.manual_seed(0)
    model = NTMConfig(transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1),
                      predictor=TransformerPredictorConfig(**TINY, head=MixtureHeadConfig(num_components=3)),
                      process=MarkovConfig(steps=(2,))).build(dims).double()
    x = torch.randn(64, 2, 1, dtype=F64)
    step_nlls, _, _ = model.trajectory_nll(x, 2, generator=torch.Generator().manual_seed(0))
    step_nlls.mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        out = model.predictor(torch.randn(5, 2, 1, dtype=F64), torch.full((5,), 0.5, dtype=F64),
                              torch.full((5,), 0.1, dtype=F64))
    assert (out.mu[:, 0] - out.mu[:, 2]).abs().max() > 1e-6


def test_mixture_head_meets_the_predictor_contract():
    for cls in (TransformerPredictorConfig, TrajectoryPredictorConfig):
        testing.check_predictor(cls(**TINY, head=MixtureHeadConfig(num_components=3)))


def test_head_slot_round_trips_and_reads_older_configs():
    cfg = TransformerPredictorConfig(**TINY, head=MixtureHeadConfig(num_components=2))
    dumped = PREDICTORS.dump(cfg)
    assert dumped["head"] == {"name": "mixture", "num_components": 2} and PREDICTORS.load(dumped) == cfg
    assert cfg.output_distribution() is Mixture and TransformerPredictorConfig().output_distribution() is Gaussian
    old = {"name": "trajectory", **TINY, "mlp_ratio": 4.0, "parameterization": "posterior", "sigma": "posterior"}
    assert PREDICTORS.load(old) == TrajectoryPredictorConfig(**TINY, head=GaussianHeadConfig(sigma="posterior"))
    with pytest.raises(ValueError, match="belong to head:gaussian"):
        TransformerPredictorConfig(head=MixtureHeadConfig(), sigma="posterior")
    with pytest.raises(ValueError, match="at least one component"):
        MixtureHeadConfig(num_components=0)
    assert set(HEADS.names()) >= {"gaussian", "mixture"}


# -- models: sampling, score denoising, guidance ---------------------------------------------------------------


def mixture_model(num_classes: int = 0):
    cfg = NTMConfig(transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, use_condition=bool(num_classes)),
                    predictor=TrajectoryPredictorConfig(**TINY, head=MixtureHeadConfig(num_components=3)),
                    process=MarkovConfig(steps=(3,)))
    return testing.build_model(cfg, ModelDims(2, 1, num_classes), scale=0.1)


def test_ancestral_sampling_and_score_denoising_with_the_mixture_head():
    model = mixture_model()
    out = AncestralConfig().build()(model, 16, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    again = AncestralConfig().build()(model, 16, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (16, 2, 1) and torch.isfinite(out.x).all() and torch.equal(out.x, again.x)
    x_hat = ScoreDenoiser()(model, out.x_trajectory, out.times)
    assert x_hat.shape == (16, 2, 1) and torch.isfinite(x_hat).all()


def test_guidance_with_the_mixture_head_is_refused():
    cfg = NTMConfig(predictor=TransformerPredictorConfig(**TINY, head=MixtureHeadConfig()))
    AncestralConfig().check_model(cfg)  # unguided: fine
    with pytest.raises(ValueError, match=r"^guidance is defined for the gaussian head only; set --sampler.guidance 0$"):
        AncestralConfig(guidance=1.5).check_model(cfg)
    AncestralConfig(guidance=1.5).check_model(NTMConfig())  # the Gaussian head: unchanged
    model = mixture_model(num_classes=3)
    with pytest.raises(TypeError, match="gaussian head only"):  # built by hand, past the config check
        AncestralConfig(guidance=1.5).build()(model, 4, torch.tensor([0, 1, 2, 0]))


def test_cli_refuses_guidance_with_the_mixture_head_in_one_line(capsys):
    assert main(["train", "digits-ntm", "predictor.head:mixture", "--dry-run"]) == 2  # the preset guides (w = 1.5)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ntm train: error: guidance is defined for the gaussian head only; set --sampler.guidance 0"]
    assert main(["train", "toy-ntm", "predictor.head:mixture", "--predictor.head.num-components", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_components" in err[0] and "at least one component" in err[0]


def test_a_tiny_mixture_head_ntm_trains_and_samples_from_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "mix"
    args = ["train", "toy-ntm", "predictor.head:mixture", "--predictor.head.num-components", "3",
            "--run-dir", str(run_dir), "--train.steps", "3", "--train.sample-every", "0", "--train.warmup-steps", "0",
            "--train.log-every", "1", "--eval.num-examples", "64", "--eval.num-points", "64",
            "--predictor.width", "16", "--predictor.depth", "1", "--predictor.num-heads", "2",
            "--transporter.width", "16", "--transporter.num-heads", "2", "--transporter.num-blocks", "1",
            "--transporter.layers-per-block", "1"]
    assert main(args) == 0, capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["predictor"]["head"] == {"name": "mixture", "num_components": 3}
    final = json.loads((run_dir / "final.json").read_text())
    assert math.isfinite(final["nll_traj_bpd"])
    capsys.readouterr()
    assert main(["sample", "--run", str(run_dir), "--steps", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s.npy").is_file()
    capsys.readouterr()
    assert main(["sample", "--run", str(run_dir), "--guidance", "1.5", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("guidance is defined for the gaussian head only; set --sampler.guidance 0")


# -- the analytic mixture oracle ------------------------------------------------------------------------------


def oracle_model(mixture: GaussianMixture, steps: int) -> NTM:
    return NTM(IdentityTransporter(), MixtureReversePredictor(mixture), MarkovConfig(steps=(steps,)).build(),
               ModelDims(mixture.dim, 1)).double()


MIXTURE = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64),
                          torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-0.5, -2.0]], dtype=F64),
                          torch.tensor([0.05, 0.2, 0.1], dtype=F64))
"""A 2-D mixture of unequal weights and variances."""


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_exact_mixture_reverse_conditional_reproduces_the_oracle_trajectory_nll(steps):
    model = oracle_model(MIXTURE, steps)
    x = MIXTURE.sample(512, torch.Generator().manual_seed(steps)).reshape(-1, 2, 1)
    step_nlls, traj, times = model.trajectory_nll(x, steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step_nlls.sum(-1), trajectory_nll(MIXTURE, traj.flatten(2), times), rtol=1e-10, atol=1e-9)


def test_score_denoising_through_the_mixture_oracle_is_the_exact_posterior_mean():
    steps = 3
    model = oracle_model(MIXTURE, steps)
    x = MIXTURE.sample(256, torch.Generator().manual_seed(0)).reshape(-1, 2, 1)
    _, traj, times = model.trajectory_nll(x, steps, generator=torch.Generator().manual_seed(1))
    x_hat = ScoreDenoiser()(model, traj, times)
    torch.testing.assert_close(x_hat.flatten(1), posterior_mean(MIXTURE, traj[:steps].flatten(2), times[:steps]),
                               rtol=1e-9, atol=1e-9)
