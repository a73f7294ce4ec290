"""spline-tarflow: the rational-quadratic spline on its own, the model at zero init, and TarFlow unchanged by the
pluggable-transform refactor (its old affine math, written out here, reproduced bit for bit)."""

from __future__ import annotations

import math

import pytest
import torch

from ntm import testing
from ntm.nn import KVCache
from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS, SplineTarFlowConfig, TarFlowConfig
from ntm.transporters.spline_tarflow import RationalQuadraticSpline, _derivatives
from ntm.transporters.tarflow import AffineTransform, ComposedTransform

B = 3.0
K = 6


def spline(**kw) -> RationalQuadraticSpline:
    return RationalQuadraticSpline(K, B, **kw)


def random_params(n: int, d: int = 2, scale: float = 1.0, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3 * K - 1, d, generator=gen, dtype=dtype) * scale


def values(n: int, d: int = 2, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    """Uniform on [-1.5 B, 1.5 B]: a third of them in the identity tails."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=gen, dtype=dtype) * 2 - 1) * 1.5 * B


# -- the elementwise spline ------------------------------------------------------------------------------------


CLIPS = {"size_clip": 0.4, "derivative_clip": 3.0}
"""SplineTarFlowConfig's defaults."""


@pytest.mark.parametrize("clips", [{}, CLIPS], ids=["unclipped", "clipped"])
def test_zero_parameters_are_the_exact_identity(clips):
    for dtype in (torch.float32, torch.float64):
        x = torch.cat([values(500, dtype=dtype), torch.tensor([[-B, B], [0.0, -0.0]], dtype=dtype)])
        params = torch.zeros(x.shape[0], 3 * K - 1, 2, dtype=dtype)
        u, log_du = spline(**clips)(x, params)
        assert torch.equal(u, x) and torch.all(log_du == 0)
        ulp = torch.finfo(dtype).eps * B
        torch.testing.assert_close(spline(**clips).inverse(x, params), x, rtol=0, atol=2 * ulp)


def test_spline_is_strictly_increasing_and_continuous_at_the_knots_and_the_bound():
    sp = spline()
    params = random_params(1, d=1, scale=2.0).expand(20001, -1, -1)
    x = torch.linspace(-2 * B, 2 * B, 20001, dtype=torch.float64)[:, None]
    u, log_du = sp(x, params)
    assert torch.all(u.diff(dim=0) > 0)
    xk, yk, _ = sp.knots(params[:1])
    eps = 1e-11
    for point in [*xk.flatten().tolist(), -B, B]:
        near = torch.tensor([[point - eps], [point + eps]], dtype=torch.float64)
        un, ln = sp(near, params[:2])
        assert abs(un[1] - un[0]).item() < 1e-7  # no jump in the map
        assert abs(ln[1] - ln[0]).item() < 1e-6  # nor in its slope (C1)
    # the knots map to the knots; at the bound the slope is the tails' slope, 1
    uk, lk = sp(xk.flatten()[:, None], params[: K + 1])
    torch.testing.assert_close(uk.flatten(), yk.flatten(), rtol=0, atol=1e-12)
    assert abs(lk[0]).item() < 1e-12 and abs(lk[-1]).item() < 1e-12
    outside = x.abs().flatten() > B
    assert torch.equal(u[outside], x[outside]) and torch.all(log_du[outside] == 0)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_inverse_is_exact_in_float64_inside_and_outside_the_bound(scale):
    sp = spline()
    params = random_params(4000, scale=scale, seed=2)
    x = values(4000, seed=3)
    u, log_du = sp(x, params)
    x_back = sp.inverse(u, params)
    # the error is round-off in u (~1e-16 B) over the local slope plus round-off in x: bound it by that, and by
    # 1e-10 where the map is not flatter than 1e-4 (at scale 3 minimum bins and derivatives make slopes of 1e-7)
    err = (x_back - x).abs()
    assert torch.all(err < 1e-14 * (1 + 1 / log_du.exp()))
    assert err[log_du > math.log(1e-4)].max() < 1e-10
    assert torch.equal(x_back[x.abs() > B], x[x.abs() > B])
    z = values(4000, seed=4)
    z_back, log_dz = sp(sp.inverse(z, params), params)
    assert torch.all((z_back - z).abs() < 1e-14 * (1 + log_dz.exp()))  # round-off in x times the slope


def test_log_derivative_matches_autograd():
    sp = spline()
    params = random_params(3000, seed=5)
    x = values(3000, seed=6).requires_grad_()
    u, log_du = sp(x, params)
    (grad,) = torch.autograd.grad(u.sum(), x)  # elementwise: the Jacobian is diagonal
    assert torch.all(grad > 0)
    torch.testing.assert_close(log_du, grad.log(), rtol=0, atol=1e-10)


def test_inverse_stays_accurate_where_one_plus_alpha_is_negative():
    """Flat bins between steep knots (delta_{k+1} > 2 s): the quadratic's 1 + alpha < 0, the second root form."""
    sp = spline()
    params = torch.zeros(1, 3 * K - 1, 1, dtype=torch.float64)
    params[0, K : 2 * K, 0] = torch.tensor([4.0, -4, 4, -4, 4, -4])  # alternating tall and flat bins
    params[0, 2 * K :, 0] = 6.0  # steep interior knots
    x = torch.linspace(-B, B, 5001, dtype=torch.float64)[:, None]
    p = params.expand(x.shape[0], -1, -1)
    u, log_du = sp(x, p)
    assert torch.all(u.diff(dim=0) > 0) and log_du.exp().min() < 1e-4
    xk, yk, deriv = sp.knots(p)
    _, y0, _, h, _, r0, r1 = sp._bin(u, yk, xk, yk, deriv)
    eta = (u - y0) / h
    assert ((r0 * (1 - eta) + (2 - r1) * eta) < 0).sum() > 500  # the regime is exercised
    err = (sp.inverse(u, p) - x).abs()
    assert torch.all(err < 1e-14 * (1 + 1 / log_du.exp()))


def test_bins_and_derivatives_respect_their_minimums_for_extreme_logits():
    sp = spline(min_bin_size=0.01, min_derivative=0.05)
    params = random_params(200, scale=60.0, seed=7)
    xk, yk, deriv = sp.knots(params)
    for knots in (xk, yk):
        assert torch.all(knots.diff(dim=-1) >= 2 * B * 0.01 * (1 - 1e-9))
        assert torch.all(knots[..., 0] == -B) and torch.all(knots[..., -1] == B)
    assert torch.all(deriv >= 0.05 * (1 - 1e-9)) and torch.all(torch.isfinite(deriv))
    u, log_du = sp(values(200, seed=8), params)
    assert torch.all(torch.isfinite(u)) and torch.all(torch.isfinite(log_du))


def test_derivatives_are_the_shifted_softplus_and_one_at_zero():
    m = 1e-3
    z = torch.cat([torch.linspace(-40, 40, 801, dtype=torch.float64), torch.tensor([19.999, 20.0, 20.001])])
    d = _derivatives(z[None], m)[0]
    assert d[0] == 1 and d[-1] == 1  # the boundary derivatives: the tails' slope
    expected = m + torch.logaddexp(torch.zeros_like(z), z + math.log(math.expm1(1 - m)))  # m + softplus(z + c)
    torch.testing.assert_close(d[1:-1], expected, rtol=1e-13, atol=1e-15)
    z32 = torch.tensor([-200.0, -20.0, 0.0, 19.0, 21.0, 200.0], requires_grad=True)
    (grad,) = torch.autograd.grad(_derivatives(z32[None], m).sum(), z32)
    assert torch.all(torch.isfinite(grad)) and torch.all(grad >= 0)
    assert _derivatives(torch.zeros(1, 5), m).eq(1).all()  # float32 too


@pytest.mark.parametrize("clips", [{}, CLIPS], ids=["unclipped", "clipped"])
def test_gradients_reach_every_spline_parameter_at_zero(clips):
    """The exact-identity forms must not cut the gradient: widths, heights and derivatives all get one at init."""
    params = torch.zeros(64, 3 * K - 1, 1, dtype=torch.float64, requires_grad=True)
    x = values(64, d=1, seed=9) / 1.5  # inside the window
    u, log_du = spline(**clips)(x, params)
    (grad,) = torch.autograd.grad((0.5 * u.square() - log_du).sum(), params)
    rows = grad.abs().sum(dim=(0, 2))
    assert torch.all(rows[:K] > 0) and torch.all(rows[K : 2 * K] > 0) and torch.all(rows[2 * K :] > 0)
    if clips:  # the soft clip has slope 1 at 0: the same gradient as unclipped
        (plain,) = torch.autograd.grad((0.5 * spline()(x, params)[0].square() - spline()(x, params)[1]).sum(), params)
        torch.testing.assert_close(grad, plain, rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_bins", [2, 6, 16])
def test_clipped_slopes_stay_within_their_documented_bounds(num_bins):
    """Bin slopes within e^(+-4 c_s) whatever K, derivatives within [0.083, 3.57], log-slope within [-3.90, 2.28]."""
    sp = RationalQuadraticSpline(num_bins, B, **CLIPS)
    gen = torch.Generator().manual_seed(12)
    # logits from tiny to extreme: the clip saturates, every corner of the box is visited
    params = torch.randn(3000, 3 * num_bins - 1, 2, generator=gen, dtype=torch.float64)
    params = params * torch.logspace(-1, 2, 3000, dtype=torch.float64)[:, None, None]
    xk, yk, deriv = sp.knots(params)
    log_s = (yk.diff(dim=-1) / xk.diff(dim=-1)).log()
    assert log_s.abs().max() < 4 * 0.4
    c, m = math.log(math.expm1(1 - 1e-3)), 1e-3
    lo, hi = m + math.log1p(math.exp(c - 3.0)), m + math.log1p(math.exp(c + 3.0))  # m_d + softplus(c -+ c_d)
    assert round(lo, 3) == 0.083 and round(hi, 2) == 3.57
    assert deriv.min() >= lo * (1 - 1e-12) and deriv.max() <= hi * (1 + 1e-12)
    x = (torch.rand(3000, 2, generator=gen, dtype=torch.float64) * 2 - 1) * B
    u, log_du = sp(x, params)
    assert log_du.min() > -3.90 and log_du.max() < 2.28
    x_back = sp.inverse(u, params)
    assert (x_back - x).abs().max() < 1e-13  # slopes above e^-3.9: the inverse loses no digits
    unclipped = RationalQuadraticSpline(num_bins, B)(x, params)[1]
    assert unclipped.min() < -6  # the same logits unclipped: far flatter bins


def test_config_defaults_clip_the_spline_and_none_unclips_it():
    cfg = SplineTarFlowConfig()
    assert (cfg.size_clip, cfg.derivative_clip) == (CLIPS["size_clip"], CLIPS["derivative_clip"])
    sp = cfg.elementwise().second
    assert (sp.size_clip, sp.derivative_clip, sp.logit_scale) == (0.4, 3.0, cfg.width**-0.5)
    plain = SplineTarFlowConfig(size_clip=None, derivative_clip=None, affine=False).elementwise()
    assert plain.size_clip is None and plain.derivative_clip is None
    with pytest.raises(ValueError, match="size_clip"):
        SplineTarFlowConfig(size_clip=0.0)


def test_affine_then_spline_composes_and_inverts():
    tr = ComposedTransform(AffineTransform(3.0), spline())
    assert tr.num_params == 2 + 3 * K - 1
    gen = torch.Generator().manual_seed(10)
    params = torch.randn(500, tr.num_params, 2, generator=gen, dtype=torch.float64)
    x = values(500, seed=11).requires_grad_()
    u, log_du = tr(x, params)
    (grad,) = torch.autograd.grad(u.sum(), x)
    torch.testing.assert_close(log_du, grad.log(), rtol=0, atol=1e-10)
    torch.testing.assert_close(tr.inverse(u.detach(), params), x.detach(), rtol=0, atol=1e-9)


# -- the spline-tarflow model -----------------------------------------------------------------------------------


def test_registered_with_the_same_blocks_as_tarflow():
    assert TRANSPORTERS.name_of(SplineTarFlowConfig()) == "spline-tarflow"
    dims = ModelDims(5, 3, 2)
    kw = {"width": 16, "num_heads": 2, "num_blocks": 3, "use_condition": True}
    spl = SplineTarFlowConfig(**kw, num_bins=4).build(dims).state_dict()
    tar = TarFlowConfig(**kw).build(dims).state_dict()
    assert list(spl) == list(tar)
    assert spl["blocks.0.out.linear.weight"].shape == (3 * (2 + 3 * 4 - 1), 16)  # (mu, a, 11 spline numbers) x 3
    plain = SplineTarFlowConfig(**kw, num_bins=4, affine=False).build(dims).state_dict()
    assert plain["blocks.0.out.linear.weight"].shape == (3 * (3 * 4 - 1), 16)


@pytest.mark.parametrize("affine", [True, False])
def test_fresh_model_is_the_identity_with_zero_logdet(affine):
    cfg = SplineTarFlowConfig(width=16, num_heads=2, num_blocks=3, bound=1.0, affine=affine)
    dims = ModelDims(5, 2, 3)
    for dtype in (torch.float32, torch.float64):
        module = cfg.build(dims).to(dtype)
        x, t, cond = testing.transporter_inputs(dims, 4, seed=0, dtype=dtype)
        x = x * 2  # many values beyond the bound
        with torch.no_grad():
            u, logdet = module(x, t, cond)
            assert torch.equal(u, x) and torch.all(logdet == 0)
            for method in module.inverse_methods:
                torch.testing.assert_close(module.inverse(x, t, cond, method=method), x, rtol=0, atol=1e-5)


def test_jacobi_is_exact_after_n_sweeps():
    dims = ModelDims(6, 2)
    exact = testing.build_transporter(SplineTarFlowConfig(width=32, num_heads=2), dims, seed=1, scale=0.08)
    x, t, _ = testing.transporter_inputs(dims, 3, seed=1)
    with torch.no_grad():
        u, _ = exact(x, t)
    errors = []
    for iters in (1, 3, 6):
        cfg = SplineTarFlowConfig(
            width=32, num_heads=2, inverse_method="jacobi", jacobi_max_iters=iters, jacobi_tol=0.0
        )
        module = cfg.build(dims).double()
        module.load_state_dict(exact.state_dict())
        with torch.no_grad():
            errors.append((module.inverse(u, t) - x).abs().max().item())
    assert errors[-1] < 1e-12 and errors[0] > errors[-1]


def test_spline_math_runs_in_float32_under_bf16_autocast():
    module = testing.build_transporter(SplineTarFlowConfig(width=16, num_heads=2), ModelDims(4, 2), dtype=torch.float32)
    x = torch.randn(3, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, logdet = module(x, torch.rand(3))
    assert u.dtype == torch.float32 and logdet.dtype == torch.float32


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_bins \\* min_bin_size"):
        SplineTarFlowConfig(num_bins=10, min_bin_size=0.1)
    with pytest.raises(ValueError, match="num_heads"):
        SplineTarFlowConfig(width=30, num_heads=4)
    with pytest.raises(ValueError, match="num_bins"):
        SplineTarFlowConfig(num_bins=1)


# -- TarFlow unchanged by the refactor ---------------------------------------------------------------------------

TARFLOW_STATE = [
    ("time_embed.mlp.0.weight", (16, 128)), ("time_embed.mlp.0.bias", (16,)),
    ("time_embed.mlp.2.weight", (16, 16)), ("time_embed.mlp.2.bias", (16,)),
    ("cond_embed.labels.table.weight", (5, 16)),
    ("blocks.0.start", (1, 1, 16)), ("blocks.0.pos", (1, 3, 16)),
    ("blocks.0.in_proj.weight", (16, 2)), ("blocks.0.in_proj.bias", (16,)),
    ("blocks.0.layers.0.attn.qkv.weight", (48, 16)), ("blocks.0.layers.0.attn.qkv.bias", (48,)),
    ("blocks.0.layers.0.attn.proj.weight", (16, 16)), ("blocks.0.layers.0.attn.proj.bias", (16,)),
    ("blocks.0.layers.0.mlp.fc1.weight", (64, 16)), ("blocks.0.layers.0.mlp.fc1.bias", (64,)),
    ("blocks.0.layers.0.mlp.fc2.weight", (16, 64)), ("blocks.0.layers.0.mlp.fc2.bias", (16,)),
    ("blocks.0.layers.0.ada.1.weight", (96, 16)), ("blocks.0.layers.0.ada.1.bias", (96,)),
    ("blocks.0.out.ada.1.weight", (32, 16)), ("blocks.0.out.ada.1.bias", (32,)),
    ("blocks.0.out.linear.weight", (4, 16)), ("blocks.0.out.linear.bias", (4,)),
]
"""TarFlow's state dict before the transform became pluggable (old checkpoints load)."""


def test_tarflow_state_dict_keys_and_shapes_are_unchanged():
    module = TarFlowConfig(width=16, num_heads=2, num_blocks=1, layers_per_block=1, use_condition=True).build(
        ModelDims(3, 2, 4)
    )
    assert [(k, tuple(v.shape)) for k, v in module.state_dict().items()] == TARFLOW_STATE


def _old_clip(a, c):
    return a if c is None else c * torch.tanh(a / c)


def _old_read(block, h, ctx, cache=None):
    c, context = ctx
    for layer in block.layers:
        h = layer(h, c, mask="causal", cache=cache, context=context)
    return block.out(h, c).chunk(2, dim=-1)


def _old_forward(block, clip, x, ctx):
    """TarFlow's block forward before the refactor, line for line."""
    xs = x.flip(1) if block.reverse else x
    mu, a = _old_read(block, block._inputs(xs), ctx)
    dtype = torch.promote_types(xs.dtype, torch.float32)
    mu, a = mu.to(dtype), _old_clip(a.to(dtype), clip)
    u = ((xs.to(mu.dtype) - mu) * torch.exp(-a)).to(x.dtype)
    return (u.flip(1) if block.reverse else u), -a.flatten(1).sum(-1)


def _old_inverse_sequential(block, clip, u, ctx):
    us = u.flip(1) if block.reverse else u
    b, n, _ = us.shape
    cache = KVCache()
    h = block.start.expand(b, -1, -1).to(block.pos.dtype) + block.pos[:, :1]
    out = []
    for i in range(n):
        mu, a = _old_read(block, h, ctx, cache)
        dtype = torch.promote_types(us.dtype, torch.float32)
        out.append((us[:, i : i + 1].to(dtype) * torch.exp(_old_clip(a.to(dtype), clip)) + mu.to(dtype)).to(u.dtype))
        if i + 1 < n:
            h = block.in_proj(out[-1]) + block.pos[:, i + 1 : i + 2]
    xs = torch.cat(out, dim=1)
    return xs.flip(1) if block.reverse else xs


def _old_inverse_jacobi(block, clip, u, ctx):
    us = u.flip(1) if block.reverse else u
    xs = us.clone()
    for _ in range(us.shape[1]):
        mu, a = _old_read(block, block._inputs(xs), ctx)
        dtype = torch.promote_types(xs.dtype, torch.float32)
        mu, a = mu.to(dtype), _old_clip(a.to(dtype), clip)
        xs = (us.to(mu.dtype) * torch.exp(a) + mu).to(u.dtype)
    return xs.flip(1) if block.reverse else xs


@pytest.mark.parametrize("index", range(len(TarFlowConfig.conformance_configs())))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tarflow_outputs_are_bit_identical_to_the_old_affine_block(index, dtype):
    cfg = TarFlowConfig.conformance_configs()[index]
    for dims in (ModelDims(4, 2, 3), testing.TEXT_DIMS):
        module = testing.build_transporter(cfg, dims, seed=3, scale=0.2, dtype=dtype)
        x, t, cond = testing.transporter_inputs(dims, 3, seed=4, dtype=dtype)
        with torch.no_grad():
            ctx = module._context(t, cond, x)
            h, logdet = x, torch.zeros(3, dtype=torch.promote_types(dtype, torch.float32))
            for block in module.blocks:
                h, ld = _old_forward(block, cfg.soft_clip, h, ctx)
                logdet = logdet + ld
            u, new_logdet = module(x, t, cond)
            assert torch.equal(u, h) and torch.equal(new_logdet, logdet)
            seq, jac = u, u
            for block in reversed(module.blocks):
                seq = _old_inverse_sequential(block, cfg.soft_clip, seq, ctx)
                jac = _old_inverse_jacobi(block, cfg.soft_clip, jac, ctx)
            assert torch.equal(module.inverse(u, t, cond, method="sequential"), seq)
            assert torch.equal(module.inverse(u, t, cond, method="jacobi"), jac)


def test_tarflow_under_bf16_autocast_is_bit_identical_to_the_old_affine_block():
    cfg = TarFlowConfig(width=16, num_heads=2)
    module = testing.build_transporter(cfg, ModelDims(4, 2), seed=1, scale=0.1, dtype=torch.float32)
    x, t, _ = testing.transporter_inputs(ModelDims(4, 2), 3, seed=1, dtype=torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = module._context(t, None, x)
        h = x
        for block in module.blocks:
            h, _ = _old_forward(block, cfg.soft_clip, h, ctx)
        assert torch.equal(module(x, t)[0], h)
