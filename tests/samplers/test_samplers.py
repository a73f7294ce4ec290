import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntm.eval.oracle import GaussianReversePredictor
from ntm.distributions import Gaussian
from ntm.forward import MarkovConfig, interpolant
from ntm.model import NTM, NTMConfig
from ntm.predictors import TrajectoryPredictorConfig, TransformerPredictorConfig
from ntm.samplers import SAMPLERS, AncestralConfig, AncestralSampler, Sampler, guide, guided
from ntm.spec import ModelDims
from ntm.transporters import IdentityTransporter, TarFlowConfig
from tests.conftest import perturb_

F64 = torch.float64

gaussians = st.builds(
    lambda mu, ls: Gaussian(torch.tensor(mu, dtype=F64), torch.tensor(ls, dtype=F64)),
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.lists(st.floats(-3, 2), min_size=3, max_size=3),
)


@settings(max_examples=50, deadline=None)
@given(c=gaussians, u=gaussians, w=st.floats(0.0, 10.0))
def test_guidance_properties(c, u, w):
    unguided = guide(c, u, 0.0)
    assert torch.equal(unguided.mu, c.mu) and torch.equal(unguided.log_sigma, c.log_sigma)
    same = guide(c, c, w)  # equal conditional and unconditional outputs pass through unchanged
    torch.testing.assert_close(same.mu, c.mu)
    torch.testing.assert_close(same.log_sigma, c.log_sigma)
    g = guide(c, u, w)
    assert torch.all(g.log_sigma <= c.log_sigma + 1e-12)  # guidance never widens the conditional
    # when sigma_c >= sigma_u (s = 1) the rule is plain CFG extrapolation of the mean
    s = torch.clamp(torch.exp(c.log_sigma - u.log_sigma), max=1) ** 2
    denom = 1 + w - w * s
    torch.testing.assert_close(g.mu, ((1 + w) * c.mu - w * s * u.mu) / denom)


def oracle_model(steps: int):
    mean = torch.tensor([[1.5], [-0.5]], dtype=F64)
    model = NTM(IdentityTransporter(), GaussianReversePredictor(mean, 0.2), MarkovConfig(steps=(steps,)).build(), ModelDims(2, 1))
    return model.double(), mean.reshape(-1)


@pytest.mark.parametrize("steps", [1, 3])
def test_samples_match_data_moments_with_the_analytic_model(steps):
    model, mean = oracle_model(steps)
    out = AncestralSampler()(model, 40_000, generator=torch.Generator().manual_seed(0))
    t0 = out.times[0]
    x = out.x.flatten(1)
    # x_{t_0} = alpha x + sigma eps with x ~ N(m, 0.2)
    torch.testing.assert_close(x.mean(0), interpolant.alpha(t0) * mean, atol=0.02, rtol=0)
    expected_var = interpolant.alpha(t0) ** 2 * 0.2 + interpolant.sigma(t0) ** 2
    torch.testing.assert_close(x.var(0), expected_var.expand(2), atol=0.01, rtol=0)


def test_temperature_scales_spread():
    model, _ = oracle_model(2)
    gen = torch.Generator().manual_seed(0)
    cold = AncestralConfig(temperature=0.5).build()(model, 20_000, generator=gen).x.flatten(1).var(0)
    warm = AncestralConfig(temperature=1.0).build()(model, 20_000, generator=gen).x.flatten(1).var(0)
    # the analytic model is linear-Gaussian, so every variance scales by tau^2 exactly
    torch.testing.assert_close(cold / warm, torch.full((2,), 0.25, dtype=F64), atol=0.02, rtol=0)


def test_trajectory_is_consistent_in_u_and_x_space():
    cfg = NTMConfig(
        transporter=TarFlowConfig(width=16, num_heads=2, use_condition=True),
        predictor=TrajectoryPredictorConfig(depth=2, width=16),
        process=MarkovConfig(steps=(2, 4)),
    )
    torch.manual_seed(0)
    model = perturb_(cfg.build(ModelDims(3, 2, 5)), 0.05, 0).double()
    cond = torch.tensor([0, 1, 2, 3])
    out = AncestralConfig(num_steps=4, guidance=2.0).build()(model, 4, cond, return_trajectory=True)
    assert out.u_trajectory.shape == (5, 4, 3, 2) and out.x_trajectory.shape == (5, 4, 3, 2)
    torch.testing.assert_close(out.x_trajectory[0], out.x)
    torch.testing.assert_close(out.x_trajectory[-1], out.u_trajectory[-1])  # no transporter at t_K = 1
    u, _ = model.transport_levels(out.x_trajectory[:4], out.times[:4], cond)
    torch.testing.assert_close(u, out.u_trajectory[:4])


def test_guidance_on_unconditional_model_is_refused():
    model, _ = oracle_model(2)
    for cond in (torch.tensor([0, 1]), None):
        with pytest.raises(ValueError, match="class-conditional"):
            AncestralConfig(guidance=1.0).build()(model, 2, cond)


def test_sampler_reproducible_with_generator_and_any_trained_k():
    cfg = NTMConfig(
        transporter=TarFlowConfig(width=16, num_heads=2),
        predictor=TransformerPredictorConfig(depth=1, width=16),
        process=MarkovConfig(steps=(1, 2, 8)),
    )
    model = cfg.build(ModelDims(2, 1))
    for k in (1, 2, 8):
        a = AncestralConfig(num_steps=k).build()(model, 3, generator=torch.Generator().manual_seed(5)).x
        b = AncestralConfig(num_steps=k).build()(model, 3, generator=torch.Generator().manual_seed(5)).x
        assert torch.equal(a, b) and torch.isfinite(a).all()


def test_every_registered_sampler_name_is_its_own_class_and_config():
    entries = [SAMPLERS.get(name) for name in SAMPLERS.names()]
    assert len({e.cls for e in entries}) == len(entries) and len({e.config_cls for e in entries}) == len(entries)
    for e in entries:
        assert issubclass(e.cls, Sampler) and type(e.config_cls().build()) is e.cls


def _legacy_ancestral(model, n, cond, num_steps, guidance, temperature, generator):
    """The sampler as it was before settings moved into the config (per-call overrides), kept as the reference."""
    w, tau = guidance, temperature
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    times = model.process.times(num_steps, dtype=dtype)
    guided_ = w != 0 and cond is not None
    shape = (n, model.dims.num_tokens, model.dims.token_dim)
    u = torch.randn(shape, generator=generator, dtype=dtype) * tau
    batch_cond = torch.cat([cond, torch.full_like(cond, model.dims.num_classes)]) if guided_ else cond
    cache = model.predictor.new_cache()
    for k in range(num_steps, 0, -1):
        t = times[k].expand(n * (2 if guided_ else 1))
        g = model.predictor.step(torch.cat([u, u]) if guided_ else u, t, times[k - 1].expand_as(t), batch_cond, cache)
        if guided_:
            g = guide(g.map(lambda z: z[:n]), g.map(lambda z: z[n:]), w)
        z = torch.randn(shape, generator=generator, dtype=dtype)
        u = (g.mu + g.sigma * tau * z).to(dtype)
    return model.decode_levels(u[None], times[:1], cond)[0]


@pytest.mark.parametrize("predictor", [TrajectoryPredictorConfig(depth=2, width=16), TransformerPredictorConfig(depth=1, width=16)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_config_replace_gives_exactly_the_old_per_call_override(predictor, dtype):
    dims = ModelDims(3, 2, 5)
    torch.manual_seed(0)
    transporter = TarFlowConfig(width=16, num_heads=2, use_condition=True).build(dims)
    model = NTM(transporter, predictor.build(dims), MarkovConfig(steps=(2, 4)).build(), dims)
    model = perturb_(model, 0.05, 0).to(dtype)
    cond = torch.tensor([0, 1, 2, 3, 4, 5])  # the last one is the null label itself
    base = AncestralConfig(num_steps=4)
    for settings in ({"guidance": 2.0}, {"guidance": 0.5, "temperature": 0.7, "num_steps": 2}, {"guidance": 0.0}):
        legacy = _legacy_ancestral(model, 6, cond, **{"num_steps": 4, "temperature": 1.0, **settings},
                                   generator=torch.Generator().manual_seed(7))
        new = base.replace(**settings).build()(model, 6, cond, generator=torch.Generator().manual_seed(7)).x
        assert torch.equal(new, legacy), settings
    unguided = base.build()(model, 6, cond, generator=torch.Generator().manual_seed(7)).x
    assert not torch.equal(unguided, base.replace(guidance=2.0).build()(model, 6, cond, generator=torch.Generator().manual_seed(7)).x)


def test_guided_runs_both_branches_in_one_call_and_w0_is_the_conditional_branch():
    calls = []

    def fn(x, t, c):
        calls.append((x.shape[0], c.tolist()))
        return Gaussian(x * (1 + c.reshape(-1, 1).to(F64)) + t.reshape(-1, 1), torch.zeros_like(x) - c.reshape(-1, 1).to(F64))

    x = torch.randn(3, 2, dtype=F64)
    t = torch.rand(3, dtype=F64)
    cond = torch.tensor([0, 2, 1])
    conditional = fn(x, t, cond)
    calls.clear()
    out = guided(fn, (x, t), cond, weight=0.0, null=torch.full_like(cond, 4), rule=guide)
    assert calls == [(3, [0, 2, 1])]  # w = 0: the conditional branch alone, not a doubled batch
    assert torch.equal(out.mu, conditional.mu) and torch.equal(out.log_sigma, conditional.log_sigma)
    calls.clear()
    seen = []
    out = guided(fn, (x, t), cond, weight=1.5, null=torch.full_like(cond, 4), rule=lambda c, u, w: seen.append((c, u, w)) or c)
    assert calls == [(6, [0, 2, 1, 4, 4, 4])]  # one call on [cond; null]
    (c, u, w), = seen
    null = fn(x, t, torch.full_like(cond, 4))
    assert w == 1.5 and torch.equal(c.mu, conditional.mu) and torch.equal(u.mu, null.mu) and torch.equal(u.log_sigma, null.log_sigma)
    v = guided(lambda x, c: x * c.reshape(-1, 1), (x,), cond, weight=1.0, null=torch.full_like(cond, 4),
               rule=lambda c, u, w: c - u)
    torch.testing.assert_close(v, x * (cond - 4).reshape(-1, 1).to(F64))  # plain tensors split too
    unlabelled = guided(lambda x, c: (x.shape[0], c), (x,), None, weight=1.0, null=torch.full((3,), 4), rule=guide)
    assert unlabelled == (3, None)  # no labels: nothing to guide, one plain call
    with pytest.raises(ValueError, match="class-conditional"):
        guided(fn, (x, t), cond, weight=1.0, null=None, rule=guide)  # a model without any condition
    # the earlier keyword (labels only): num_classes gives the null label, num_classes=0 no condition
    calls.clear()
    legacy = guided(fn, (x, t), cond, weight=1.5, num_classes=4, rule=lambda c, u, w: u)
    assert calls == [(6, [0, 2, 1, 4, 4, 4])] and torch.equal(legacy.mu, null.mu)
    with pytest.raises(ValueError, match="class-conditional"):
        guided(fn, (x, t), cond, weight=1.0, num_classes=0, rule=guide)
