import pytest
import torch

from ntm.spec import ModelDims
from ntm.transporters import TarFlowConfig
from tests.conftest import perturb_


def test_jacobi_converges_with_iterations():
    torch.manual_seed(0)
    dims = ModelDims(6, 2)
    exact = perturb_(TarFlowConfig(width=32, num_heads=2).build(dims), 0.05, 0).double()
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    u, _ = exact(x, t)
    errors = []
    for iters in (1, 2, 4, 6):
        cfg = TarFlowConfig(width=32, num_heads=2, inverse_method="jacobi", jacobi_max_iters=iters, jacobi_tol=0.0)
        module = cfg.build(dims).double()
        module.load_state_dict(exact.state_dict())
        with torch.no_grad():
            errors.append((module.inverse(u, t) - x).abs().max().item())
    assert errors[-1] < 1e-12  # N sweeps are exact
    assert errors[0] > errors[-1]


def test_soft_clip_bounds_log_scales():
    dims = ModelDims(5, 1)
    module = perturb_(TarFlowConfig(width=16, num_heads=2, soft_clip=0.5, num_blocks=1).build(dims), 1.0, 1).double()
    x = torch.randn(64, 5, 1, dtype=torch.float64) * 10
    _, logdet = module(x, torch.rand(64, dtype=torch.float64))
    assert logdet.abs().max() <= 0.5 * 5 + 1e-9


def test_affine_math_runs_in_float32_under_bf16_autocast():
    module = perturb_(TarFlowConfig(width=16, num_heads=2).build(ModelDims(4, 2)), 0.05, 2)
    x = torch.randn(3, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, logdet = module(x, torch.rand(3))
    assert u.dtype == torch.float32 and logdet.dtype == torch.float32


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        TarFlowConfig(width=30, num_heads=4)
    with pytest.raises(ValueError, match="num_blocks"):
        TarFlowConfig(num_blocks=0)


def test_deep_layers_deepen_only_the_block_nearest_the_prior():
    dims = ModelDims(num_tokens=6, token_dim=3)
    plain = TarFlowConfig(width=32, num_heads=2, num_blocks=3, layers_per_block=1).build(dims)
    deep = TarFlowConfig(width=32, num_heads=2, num_blocks=3, layers_per_block=1, deep_layers=4).build(dims)
    assert [len(b.layers) for b in plain.blocks] == [1, 1, 1]
    assert [len(b.layers) for b in deep.blocks] == [1, 1, 4]
    per_layer = sum(p.numel() for p in plain.blocks[0].layers[0].parameters())
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * per_layer
    # the deep block is decoded first: inverting the last block alone undoes its forward map
    perturb_(deep, scale=0.1, seed=0)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    deep = deep.double()
    c = deep._context(torch.full((2,), 0.5, dtype=torch.float64), None, x)
    u, _ = deep.blocks[-1](x, c)
    torch.testing.assert_close(deep.blocks[-1].inverse_sequential(u, c), x)
