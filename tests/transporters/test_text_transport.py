"""Transporters with an encoded (text) Condition: round trip and log-det vs the Jacobian in float64, every
registered variant; TarFlow's cross-attention really reads the condition and starts at zero."""

from __future__ import annotations

import pytest
import torch

from ntm import testing
from ntm.conditioning import Condition
from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS, TarFlowConfig

CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name in TRANSPORTERS.names()
    for i in range(len(TRANSPORTERS.get(name).config_cls.conformance_configs()))
]
TEXT = [testing.TEXT_DIMS, ModelDims(1, 3, cond_dim=4, cond_len=2), ModelDims(4, 1, cond_dim=5)]
"""Tokens and a padding mask; one token; a pooled vector alone (cond_len = 0)."""


def config(name: str, index: int):
    return TRANSPORTERS.get(name).config_cls.conformance_configs()[index]


@pytest.mark.parametrize("name, index", CASES)
@pytest.mark.parametrize("dims", TEXT, ids=["tokens", "one-token", "pooled"])
def test_round_trip_and_logdet_with_a_text_condition(name, index, dims):
    cfg = config(name, index)
    for seed in (0, 1):
        testing.check_transporter_round_trip(cfg, dims=dims, batch=3, seed=seed, scale=0.08, dtype=torch.float64)
        testing.check_transporter_logdet(cfg, dims=dims, batch=3, seed=seed, scale=0.08)
        testing.check_transporter_inverse_methods(cfg, dims=dims, batch=3, seed=seed, scale=0.08)
    testing.check_transporter_identity_at_init(cfg, dims=dims, batch=3)


def test_the_grid_and_the_inputs_hold_a_text_condition():
    texts = [c for c in testing.TRANSPORTER_CASES if c.dims.cond_len and c.with_labels]
    assert texts
    _, _, cond = testing.transporter_inputs(texts[0].dims, 3, seed=texts[0].seed)
    assert isinstance(cond, Condition) and cond.tokens.dtype == torch.float64
    assert cond.mask[:, 0].all() and not cond.mask[-1, 1:].any()  # padding, at least one real token per row


def test_tarflow_reads_the_pooled_vector_and_the_tokens():
    cfg = TarFlowConfig(width=16, num_heads=2, num_blocks=2, use_condition=True)
    dims = testing.TEXT_DIMS
    flow = testing.build_transporter(cfg, dims, seed=0, scale=0.1)
    assert all(layer.cross is not None for block in flow.blocks for layer in block.layers)
    x, t, cond = testing.transporter_inputs(dims, 3, seed=0)
    with torch.no_grad():
        u, _ = flow(x, t, cond)
        moved_tokens = Condition(cond.pooled, cond.tokens + cond.mask[..., None], cond.mask)
        moved_padding = Condition(cond.pooled, cond.tokens + (~cond.mask)[..., None], cond.mask)
        moved_pooled = Condition(cond.pooled + 1, cond.tokens, cond.mask)
        assert not torch.allclose(flow(x, t, moved_tokens)[0], u)
        assert not torch.allclose(flow(x, t, moved_pooled)[0], u)
        torch.testing.assert_close(flow(x, t, moved_padding)[0], u, rtol=0, atol=1e-12)  # padding is not read
    unconditioned = testing.build_transporter(cfg.replace(use_condition=False), dims)
    assert all(layer.cross is None for block in unconditioned.blocks for layer in block.layers)
    assert not any("cross" in n or "cond_embed" in n for n, _ in unconditioned.named_parameters())


def test_cross_attention_starts_at_zero():
    """A fresh text-conditioned TarFlow is the identity whatever the condition (zero-initialised read-outs)."""
    flow = TarFlowConfig(width=16, num_heads=2, use_condition=True).build(testing.TEXT_DIMS).double()
    x, t, cond = testing.transporter_inputs(testing.TEXT_DIMS, 3, seed=2)
    with torch.no_grad():
        u, logdet = flow(x, t, cond)
    assert torch.equal(u, x) and torch.all(logdet == 0)
    cross = flow.blocks[0].layers[0].cross
    assert torch.all(cross.proj.weight == 0) and torch.all(cross.proj.bias == 0)
