"""The learned one-pass denoiser (docs/math.md §8): the fast path, distillation, configs and saved weights."""

from __future__ import annotations

import json

import pydantic
import pytest
import torch

from ntm.experiments.config import Experiment
from ntm.denoisers import DENOISERS, LearnedDenoiser, LearnedDenoiserConfig, NoDenoiser
from ntm.denoisers.learned import (
    DenoiserNotTrained, Distillation, DistillationLoss, distilled_config, load_distilled,
)
from ntm.samplers import AncestralConfig
from ntm.spec import ModelDims
from ntm.testing import build_model, perturb_, tiny_model_configs
from ntm.train.checkpoint import CheckpointManager
from ntm.train.errors import CheckpointError

DIMS = ModelDims(3, 2, 3)  # three tokens of two channels, three classes (3 = null label)
SMALL = LearnedDenoiserConfig(width=32, depth=2, num_heads=2)


def teacher(seed: int = 0) -> torch.nn.Module:
    """A tiny perturbed TarFlow + transformer NTM (float32): its §7 estimate is far from x_{t_0}."""
    return build_model(tiny_model_configs()[0], DIMS, seed=seed, scale=0.05, dtype=torch.float32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four clusters of tokens, labels (including the null label 3) from the cluster index."""
    centers = torch.randn(4, DIMS.num_tokens, DIMS.token_dim, generator=gen(1))
    g = gen(seed)
    idx = torch.randint(4, (n,), generator=g)
    return centers[idx] + 0.1 * torch.randn(n, DIMS.num_tokens, DIMS.token_dim, generator=g), idx


def test_fast_path_neither_decodes_nor_records_autograd(monkeypatch):
    model = teacher()
    net = perturb_(SMALL.network(DIMS), 0.05, seed=3)
    denoiser = LearnedDenoiser(SMALL, net=net)
    assert denoiser.trajectory_request() == "u"

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path decoded a latent level")

    monkeypatch.setattr(model.transporter, "inverse", refuse)
    monkeypatch.setattr(model, "decode_levels", refuse)
    grad_in_forward: list[bool] = []
    net.register_forward_hook(lambda module, inputs, output: grad_in_forward.append(torch.is_grad_enabled()))
    cond = torch.tensor([0, 2, 3, 1, 3])  # 3 is the null label
    sampler = AncestralConfig(guidance=1.0).build()
    with torch.enable_grad():  # the caller's grad mode does not leak into D
        out = sampler(model, 5, cond, generator=gen(0), return_trajectory=denoiser.trajectory_request())
        x_hat = denoiser.denoise(model, out, cond)
    assert out.x is None and out.x_trajectory is None and out.u_trajectory.shape == (5, 5, 3, 2)
    assert grad_in_forward == [False]
    assert x_hat.shape == (5, 3, 2) and torch.isfinite(x_hat).all() and not x_hat.requires_grad
    with torch.no_grad():  # it is D on the sampled u_0 (and a trained net is no longer the rescaled u_0)
        expected = net(out.u_trajectory[0], out.times[0].expand(5), cond)
    torch.testing.assert_close(x_hat, expected)
    assert not torch.allclose(x_hat, out.u_trajectory[0] / (1 - out.times[0]))


def test_u_only_sampling_draws_the_same_chain_and_leaves_default_outputs_alone():
    model = teacher()
    cond = torch.tensor([1, 0, 3])
    sampler = AncestralConfig().build()
    plain = sampler(model, 3, cond, generator=gen(4))
    full = sampler(model, 3, cond, generator=gen(4), return_trajectory=True)
    u_only = sampler(model, 3, cond, generator=gen(4), return_trajectory="u")
    assert torch.equal(u_only.u_trajectory, full.u_trajectory) and u_only.x is None
    # the none denoiser decodes u_0 exactly as the sampler does by default
    assert torch.equal(NoDenoiser().denoise(model, u_only, cond), plain.x)
    # the x-space path of the learned denoiser re-encodes x_{t_0}: the same answer as from u_0, up to f(f^-1(u))
    denoiser = LearnedDenoiser(SMALL, net=perturb_(SMALL.network(DIMS), 0.05, seed=5))
    from_x = denoiser(model, full.x_trajectory, full.times, cond)
    torch.testing.assert_close(from_x, denoiser.denoise(model, u_only, cond), rtol=1e-4, atol=1e-4)


def test_distillation_moves_d_to_the_score_estimate_and_trains_d_alone():
    frozen = teacher()
    torch.manual_seed(0)
    model = Distillation(SMALL.network(DIMS), frozen)
    # the teacher is outside the module tree: not optimised, not saved again
    assert all(name.startswith("net.") for name in model.state_dict())
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.net.parameters()}
    loss = DistillationLoss((4,))
    x_eval, c_eval = toy_batch(256, seed=999)

    def errors() -> tuple[float, float]:
        u0, times, target, x_t0 = loss.targets(frozen, x_eval, c_eval, gen(5))
        with torch.no_grad():
            d = model.net(u0, times[0].expand(u0.shape[0]), c_eval)
        return (d - target).square().mean().item(), (x_t0 - target).square().mean().item()

    before, raw = errors()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        x, c = toy_batch(64, seed=step)
        value, metrics = model(x, c, loss, gen(100 + step))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        assert set(metrics) == {"mse", "mse_x_t0"}
        assert all(p.grad is None for p in frozen.parameters())
    after, _ = errors()
    assert after < 0.25 * before and after < 0.25 * raw, (before, raw, after)


def test_config_round_trips_and_is_checked():
    cfg = LearnedDenoiserConfig(width=48, depth=3, num_heads=3, mlp_ratio=2.0, weights="runs/x/denoiser")
    assert DENOISERS.name_of(cfg) == "learned" and DENOISERS.load(DENOISERS.dump(cfg)) == cfg
    exp = Experiment(denoiser=cfg)
    assert Experiment.model_validate(json.loads(json.dumps(exp.model_dump(mode="json")))).denoiser == cfg
    with pytest.raises(pydantic.ValidationError, match="must divide width"):
        LearnedDenoiserConfig(width=32, num_heads=3)
    # on a run, the weights default to <run>/denoiser; given weights are kept
    assert LearnedDenoiserConfig().for_run("runs/r").weights == "runs/r/denoiser"
    assert cfg.for_run("runs/r") == cfg
    with pytest.raises(DenoiserNotTrained, match="no weights"):
        LearnedDenoiserConfig().build()


def _save_distilled(directory, net, cfg: LearnedDenoiserConfig, dims: ModelDims, step: int = 7):
    state = {"step": step, "config": distilled_config(cfg, dims), "model": {f"net.{k}": v for k, v in net.state_dict().items()}}
    return CheckpointManager(directory / "checkpoints").save(step, state)


def test_distilled_weights_load_from_a_directory_or_a_file_with_their_own_architecture(tmp_path):
    net = perturb_(SMALL.network(DIMS), 0.05, seed=2)
    path = _save_distilled(tmp_path / "denoiser", net, SMALL, DIMS)
    u0, t0, cond = torch.randn(4, 3, 2), torch.full((4,), 0.05), torch.tensor([0, 1, 2, 3])
    for where in (tmp_path / "denoiser", path):
        # the architecture saved with the weights wins over the config's defaults
        loaded = LearnedDenoiserConfig(weights=str(where)).build().net
        assert loaded.dims == DIMS
        with torch.no_grad():
            assert torch.equal(loaded(u0, t0, cond), net(u0, t0, cond))
    other = build_model(tiny_model_configs()[0], ModelDims(2, 2, 3), dtype=torch.float32)
    denoiser = LearnedDenoiser(LearnedDenoiserConfig(weights=str(path)))
    with pytest.raises(CheckpointError, match="distilled for"):
        denoiser.from_u0(other, torch.randn(2, 2, 2), torch.tensor([0.05, 1.0]))
    with pytest.raises(DenoiserNotTrained, match=r"no distilled denoiser in .*run/denoiser.*ntm distill --run"):
        load_distilled(tmp_path / "run" / "denoiser")
