import copy
import io

import pytest
import torch

from ntm.forward import interpolant
from ntm.predictors import (
    PREDICTORS,
    PosteriorPredictor,
    PosteriorPredictorConfig,
    TrajectoryPredictorConfig,
    TransformerPredictorConfig,
    VelocityPosteriorPredictor,
    VelocityPredictor,
    VelocityTransformerConfig,
    XHatModel,
    velocity_model,
)
from ntm.spec import ModelDims
from tests.conftest import perturb_

DIMS = ModelDims(num_tokens=3, token_dim=2, num_classes=4)
TIMES = torch.tensor([0.05, 0.3, 0.6, 1.0], dtype=torch.float64)


def small(name: str):
    configs = {
        "transformer": TransformerPredictorConfig(depth=2, width=32),
        "trajectory": TrajectoryPredictorConfig(depth=2, width=32),
        "posterior": PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=32), learned_scale=True),
    }
    return perturb_(configs[name].build(DIMS), 0.05, 0).double()


def inputs(batch: int = 4):
    gen = torch.Generator().manual_seed(0)
    k = TIMES.numel() - 1
    u = torch.randn(k, batch, DIMS.num_tokens, DIMS.token_dim, generator=gen, dtype=torch.float64)
    cond = torch.randint(0, DIMS.num_classes + 1, (batch,), generator=gen)
    return u, cond


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_teacher_forced_pass_equals_level_by_level_sampling(name):
    predictor = small(name)
    u, cond = inputs()
    k, b = u.shape[:2]
    batched = predictor.forward_trajectory(u, TIMES, cond)
    assert batched.mu.shape == u.shape
    cache = predictor.new_cache()
    for level in range(k, 0, -1):  # noisiest first, as in sampling
        step = predictor.step(u[level - 1], TIMES[level].expand(b), TIMES[level - 1].expand(b), cond, cache)
        torch.testing.assert_close(step.mu, batched.mu[level - 1], rtol=0, atol=1e-12)
        torch.testing.assert_close(step.log_sigma, batched.log_sigma[level - 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_no_prediction_depends_on_a_cleaner_level(name):
    predictor = small(name)
    u, cond = inputs()
    base = predictor.forward_trajectory(u, TIMES, cond)
    for cleaner in range(u.shape[0] - 1):  # perturb u_{cleaner+1}; predictions for steps > cleaner+1 must not move
        moved = u.clone()
        moved[cleaner] += 1.0
        out = predictor.forward_trajectory(moved, TIMES, cond)
        torch.testing.assert_close(out.mu[cleaner + 1 :], base.mu[cleaner + 1 :], rtol=0, atol=1e-12)
        torch.testing.assert_close(out.log_sigma[cleaner + 1 :], base.log_sigma[cleaner + 1 :], rtol=0, atol=1e-12)


def test_trajectory_predictor_uses_noisier_context_and_markov_does_not():
    u, cond = inputs()
    for name, expect_change in [("trajectory", True), ("transformer", False)]:
        predictor = small(name)
        base = predictor.forward_trajectory(u, TIMES, cond)
        moved = u.clone()
        moved[-1] += 1.0  # the noisiest level u_K
        out = predictor.forward_trajectory(moved, TIMES, cond)
        changed = (out.mu[0] - base.mu[0]).abs().max().item() > 1e-6
        assert changed == expect_change, name


def test_condition_and_null_label_matter():
    predictor = small("transformer")
    u, _ = inputs()
    t, s = TIMES[2].expand(4), TIMES[1].expand(4)
    a = predictor(u[0], t, s, torch.tensor([0, 1, 2, 3]))
    b = predictor(u[0], t, s, torch.full((4,), DIMS.num_classes))
    assert (a.mu - b.mu).abs().max() > 1e-6
    with pytest.raises(ValueError, match="labels must lie"):
        predictor(u[0], t, s, torch.tensor([0, 1, 2, 9]))


def test_fresh_posterior_parameterised_predictor_is_the_xhat0_posterior():
    predictor = TransformerPredictorConfig(depth=1, width=16).build(ModelDims(2, 1)).double()
    u_t = torch.randn(5, 2, 1, dtype=torch.float64)
    t, s = torch.full((5,), 0.6, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    g = predictor(u_t, t, s)
    c_x, c_t, var = interpolant.posterior(s[0], t[0])
    torch.testing.assert_close(g.mu, c_t * u_t)
    torch.testing.assert_close(g.log_sigma, torch.full_like(u_t, 0.5 * var.log().item()))


def test_learned_scale_starts_at_zero_and_requires_hidden_states():
    cfg = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16), learned_scale=True)
    plain = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16))
    dims = ModelDims(3, 1)
    a, b = cfg.build(dims).double(), plain.build(dims).double()
    b.xhat.load_state_dict(a.xhat.state_dict())
    u = torch.randn(2, 3, 1, dtype=torch.float64)
    t, s = torch.full((2,), 0.5, dtype=torch.float64), torch.full((2,), 0.2, dtype=torch.float64)
    torch.testing.assert_close(a(u, t, s).log_sigma, b(u, t, s).log_sigma)


def test_posterior_sigma_is_fixed_to_the_posterior_scale():
    cfg = TransformerPredictorConfig(depth=1, width=16, sigma="posterior")
    predictor = perturb_(cfg.build(ModelDims(2, 1)), 0.5, 3).double()
    u_t = torch.randn(4, 2, 1, dtype=torch.float64)
    t, s = torch.full((4,), 0.7, dtype=torch.float64), torch.full((4,), 0.4, dtype=torch.float64)
    _, _, var = interpolant.posterior(s[0], t[0])
    torch.testing.assert_close(predictor(u_t, t, s).log_sigma, torch.full_like(u_t, 0.5 * var.log().item()))
    with pytest.raises(ValueError, match="needs parameterization 'posterior'"):
        TransformerPredictorConfig(sigma="posterior", parameterization="direct")


class _PlainXHat(XHatModel):
    """An x-hat model that predicts x_hat directly (no velocity)."""

    def forward(self, x_t, t, cond=None):
        return 0.5 * x_t, None


def test_posterior_predictor_gives_a_velocity_exactly_when_its_xhat_model_does():
    dims = ModelDims(3, 1)
    with_velocity = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16)).build(dims)
    assert isinstance(with_velocity, VelocityPosteriorPredictor) and isinstance(with_velocity, VelocityPredictor)
    assert PosteriorPredictorConfig().gives_velocity()
    direct = PosteriorPredictor.over(VelocityTransformerConfig(depth=1, width=16).build(dims), dims)
    assert isinstance(direct, VelocityPredictor)  # the capability follows the x-hat model
    plain = PosteriorPredictor.over(_PlainXHat(), dims)
    assert type(plain) is PosteriorPredictor and not isinstance(plain, VelocityPredictor)
    x, t = torch.randn(2, 3, 1), torch.rand(2)
    torch.testing.assert_close(with_velocity.velocity(x, t), with_velocity.xhat.velocity(x, t)[0])
    for clone in (copy.deepcopy(with_velocity), _reloaded(with_velocity)):
        assert type(clone) is VelocityPosteriorPredictor
        torch.testing.assert_close(clone.velocity(x, t), with_velocity.velocity(x, t))


def _reloaded(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_velocity_model_names_the_predictor_and_what_is_needed():
    class Holder:
        predictor = TransformerPredictorConfig(depth=1, width=16).build(ModelDims(2, 1))

    with pytest.raises(TypeError, match="predictor TransformerPredictor gives no flow-matching velocity; needs predictor:posterior") as err:
        velocity_model(Holder())
    assert "\n" not in str(err.value)
    Holder.predictor = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16)).build(ModelDims(2, 1))
    assert velocity_model(Holder()) is Holder.predictor
    assert not any(hasattr(p, "velocity") for p in (TransformerPredictorConfig().build(ModelDims(2, 1)), PosteriorPredictor(_PlainXHat(), ModelDims(2, 1))))
