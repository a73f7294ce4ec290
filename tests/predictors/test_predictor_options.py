"""The transformer predictors' network options (the paper's Table 4 / §C.1 predictor), float64.

``positions: rope-2d``, ``num_kv_heads``, ``time: additive``, ``text: concat``: each validates in one line, meets
the Predictor contract on a square token grid too (the conformance suite runs them on its own dims), replays its
initialisation on the meta device, parses from the command line, and has the property that could fail:
RoPE reads the grid (no position vector; the grid's shape matters), GQA with ``num_kv_heads == num_heads`` is the
MHA predictor with the same weights, the additive-time predictor depends on ``t`` and ``s``, concatenated text
changes a row's output when (and only when) its caption's real tokens change, and is cut from the output.
"""

from __future__ import annotations

import types

import pydantic
import pytest
import torch

from ntm import testing
from ntm.conditioning.condition import Condition
from ntm.model import NTMConfig
from ntm.nn.layers import AdaLNBlock
from ntm.predictors import PREDICTORS, TrajectoryPredictorConfig, TransformerPredictorConfig
from ntm.predictors.transformer import token_grid
from ntm.registry import parse
from ntm.spec import ModelDims

KINDS = {"transformer": TransformerPredictorConfig, "trajectory": TrajectoryPredictorConfig}
TINY = dict(depth=2, width=16, num_heads=2)
PAPER = dict(positions="rope-2d", num_kv_heads=1, time="additive", text="concat")
"""Every option at once, as the paper's predictor has them (8 KV heads there; 1 of 2 here)."""
OPTIONS = [{"positions": "rope-2d"}, {"num_kv_heads": 1}, {"time": "additive"}, {"text": "concat"}, PAPER]
GRID_DIMS = (ModelDims(4, 2, 4), ModelDims(4, 2, cond_dim=6, cond_len=4))
"""A 2x2 token grid, class labels and an encoded condition with tokens."""


def _option_id(option: dict) -> str:
    return "paper" if option is PAPER else "-".join(f"{k}={v}" for k, v in option.items())


def _config(kind: str, **options):
    return KINDS[kind](**TINY, **options)


def _call(predictor, u, t, s, cond):
    with torch.no_grad():
        return predictor(u, t, s, cond)


def _inputs(dims: ModelDims, batch: int = 3, seed: int = 0):
    u, times, cond = testing.predictor_inputs(dims, batch, seed=seed)
    return u[-1], times[-1].expand(batch), times[-2].expand(batch), cond


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", OPTIONS, ids=_option_id)
def test_each_option_meets_the_contract_on_a_token_grid_and_replays_its_init(kind, option):
    config = _config(kind, **option)
    testing.check_predictor(config, dims=GRID_DIMS)
    for dims in GRID_DIMS:
        testing.check_meta_init(lambda: config.build(dims), f"predictor {config!r}")


def test_options_validate_in_one_line():
    cases = [
        (dict(num_heads=4, num_kv_heads=3), r"num_kv_heads \(3\) must divide num_heads \(4\)"),
        (dict(width=24, num_heads=4, positions="rope-2d"), r"head dimension \(width / num_heads = 6\) divisible by 4"),
        (dict(grid=(2, 2)), "grid \\(2, 2\\) is read by positions 'rope-2d' only"),
        (dict(positions="rope-2d", grid=(0, 3)), "at least one row and one column"),
        (dict(num_kv_heads=0), "greater than or equal to 1"),
        (dict(time="film"), "'adaln' or 'additive'"),
        (dict(text="prefix"), "'cross-attention' or 'concat'"),
    ]
    for fields, message in cases:
        with pytest.raises(pydantic.ValidationError, match=message):
            TransformerPredictorConfig(**fields)
    with pytest.raises(ValueError, match="token grid 2x3 does not hold the model's 4 tokens"):
        _config("transformer", positions="rope-2d", grid=(2, 3)).build(ModelDims(4, 2))


def test_the_token_grid_is_given_carried_square_or_one_row():
    assert token_grid(ModelDims(256, 32)) == (16, 16)
    assert token_grid(ModelDims(6, 2)) == (1, 6)  # not a square: one row (a 1D RoPE on the column half)
    assert token_grid(ModelDims(6, 2), (2, 3)) == (2, 3)
    carried = types.SimpleNamespace(num_tokens=8, grid=(2, 4))  # dims that carry their layout's grid
    assert token_grid(carried) == (2, 4) and token_grid(carried, (4, 2)) == (4, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_rope_predictor_has_no_position_vector_and_reads_the_grid(kind):
    """No learned position parameter; the same weights on a 2x3 and on a 3x2 grid give other outputs, and moving
    tokens around is not just moving the outputs (the positions are read)."""
    dims = ModelDims(6, 2, 4)
    wide = testing.build_predictor(_config(kind, positions="rope-2d", grid=(2, 3)), dims, scale=0.2)
    tall = testing.build_predictor(_config(kind, positions="rope-2d", grid=(3, 2)), dims, scale=0.2)
    assert wide.net.pos is None and "net.pos" not in dict(wide.named_parameters())
    assert sum(p.numel() for p in wide.parameters()) == sum(p.numel() for p in tall.parameters())
    u, t, s, cond = _inputs(dims)
    a, b = _call(wide, u, t, s, cond).mu, _call(tall, u, t, s, cond).mu
    assert (a - b).abs().max() > 1e-6
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    moved = _call(wide, u[:, perm], t, s, cond).mu
    assert (moved - a[:, perm]).abs().max() > 1e-6


def _copy_mha_into_gqa(mha: torch.nn.Module, gqa: torch.nn.Module) -> None:
    state = {}
    for name, value in mha.state_dict().items():
        if ".attn.qkv." in name:
            dim = value.shape[0] // 3
            state[name.replace(".qkv.", ".q.")] = value[:dim]
            state[name.replace(".qkv.", ".kv.")] = value[dim:]
        else:
            state[name] = value
    gqa.load_state_dict(state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", [ModelDims(4, 2, 4), testing.TEXT_DIMS], ids=["labels", "text"])
def test_gqa_with_num_kv_heads_equal_to_num_heads_is_the_mha_predictor_with_the_same_weights(kind, dims):
    mha = testing.build_predictor(_config(kind), dims, scale=0.2)
    gqa = testing.build_predictor(_config(kind, num_kv_heads=2), dims, scale=0.2)
    _copy_mha_into_gqa(mha, gqa)
    u_levels, times, cond = testing.predictor_inputs(dims, 3)
    with torch.no_grad():
        a, b = mha.forward_trajectory(u_levels, times, cond), gqa.forward_trajectory(u_levels, times, cond)
    torch.testing.assert_close(b.mu, a.mu, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.log_sigma, a.log_sigma, rtol=0, atol=1e-12)


def test_gqa_shrinks_the_key_value_projections():
    dims = ModelDims(16, 4, 10)
    count = lambda **o: sum(p.numel() for p in TransformerPredictorConfig(depth=2, width=64, num_heads=8, **o)
                            .build(dims).parameters())
    hd = 64 // 8
    per_block = 2 * 64 * (8 - 2) * hd + 2 * (8 - 2) * hd  # K and V weights and biases of 6 fewer heads
    assert count() - count(num_kv_heads=2) == 2 * per_block


@pytest.mark.parametrize("kind", KINDS)
def test_additive_time_predictor_depends_on_t_and_s_and_has_no_modulation(kind):
    """With the direct Gaussian head (which reads no time itself) the outputs move with ``t`` and with ``s``:
    the time reaches the network through the token stream alone."""
    dims = ModelDims(4, 2, 4)
    config = _config(kind, time="additive").replace(head={"name": "gaussian", "parameterization": "direct"})
    predictor = testing.build_predictor(config, dims, scale=0.2)
    blocks = [m for m in predictor.modules() if isinstance(m, AdaLNBlock)]
    assert len(blocks) == 2 and all(b.ada is None for b in blocks) and predictor.net.final.ada is None
    u, t, s, cond = _inputs(dims)
    base = _call(predictor, u, t, s, cond)
    for other in (_call(predictor, u, t + 0.1, s, cond), _call(predictor, u, t, s * 0.5, cond)):
        for name in ("mu", "log_sigma"):
            assert (getattr(other, name) - getattr(base, name)).abs().amin(dim=(1, 2)).min() > 1e-8, name


def _caption_change(cond: Condition, row: int, *, padding: bool) -> Condition:
    """``cond`` with row ``row``'s real tokens (``padding``: its padding tokens) moved by 1."""
    tokens = cond.tokens.clone()
    where = ~cond.mask[row] if padding else cond.mask[row]
    tokens[row, where] += 1.0
    return Condition(cond.pooled, tokens, cond.mask)


@pytest.mark.parametrize("kind", KINDS)
def test_concat_text_changes_the_output_with_the_caption_and_is_cut_from_it(kind):
    """No cross-attention; outputs have the state's N tokens; moving one row's real caption tokens changes that
    row's output only (the pooled vector is left alone, so the tokens reach the output through the sequence), and
    moving its padding tokens changes nothing."""
    dims = ModelDims(4, 2, cond_dim=6, cond_len=4)
    predictor = testing.build_predictor(_config(kind, text="concat"), dims, scale=0.2)
    assert all(b.cross is None for b in predictor.modules() if isinstance(b, AdaLNBlock))
    u, t, s, cond = _inputs(dims, batch=3)
    row = 0
    assert (~cond.mask[row]).any(), "the check needs a row with padding"
    base = _call(predictor, u, t, s, cond)
    assert base.mu.shape == u.shape == (3, 4, 2)
    changed = _call(predictor, u, t, s, _caption_change(cond, row, padding=False)).mu
    assert (changed[row] - base.mu[row]).abs().max() > 1e-6
    torch.testing.assert_close(changed[row + 1 :], base.mu[row + 1 :], rtol=0, atol=0)
    padded = _call(predictor, u, t, s, _caption_change(cond, row, padding=True)).mu
    torch.testing.assert_close(padded, base.mu, rtol=0, atol=1e-12)
    u_levels, times, _ = testing.predictor_inputs(dims, 3)
    with torch.no_grad():
        assert predictor.forward_trajectory(u_levels, times, cond).mu.shape == u_levels.shape


def test_concat_prefix_reads_the_state_in_the_markov_predictor_only():
    """``transformer`` attends bidirectionally over caption and state; ``trajectory``'s caption prefix reads only
    itself (what the block-causal levels and the KV cache need). With the same weights the two give other
    outputs, and the trajectory's equal the Markov network's run with ``text_reads_state=False``."""
    dims = ModelDims(4, 2, cond_dim=6, cond_len=4)
    markov = testing.build_predictor(_config("transformer", text="concat"), dims, scale=0.2)
    trajectory = testing.build_predictor(_config("trajectory", text="concat"), dims, scale=0.2)
    trajectory.load_state_dict(markov.state_dict())
    u, t, s, cond = _inputs(dims)
    a, b = _call(markov, u, t, s, cond).mu, _call(trajectory, u, t, s, cond).mu
    assert (a - b).abs().max() > 1e-6
    with torch.no_grad():
        c = markov.net(u, markov._context(t, s, cond)[:, None], cond=cond, text_reads_state=False)
    torch.testing.assert_close(markov.head(c, u, t, s).mu, b, rtol=0, atol=1e-12)


def test_options_parse_from_the_command_line_and_round_trip():
    config = parse(NTMConfig, ["predictor:trajectory", "--predictor.positions", "rope-2d", "--predictor.grid", "2",
                               "8", "--predictor.num-kv-heads", "2", "--predictor.time", "additive",
                               "--predictor.text", "concat"]).predictor
    assert config == TrajectoryPredictorConfig(positions="rope-2d", grid=(2, 8), num_kv_heads=2, time="additive",
                                               text="concat")
    assert PREDICTORS.load(PREDICTORS.dump(config)) == config
    default = TransformerPredictorConfig()
    assert (default.positions, default.grid, default.num_kv_heads, default.time, default.text) == (
        "learned", None, None, "adaln", "cross-attention")


@pytest.mark.parametrize("kind", KINDS)
def test_a_caption_model_with_every_option_samples_with_guidance_and_trains(kind):
    """The paper's predictor in a whole caption-conditioned NTM (the small-text encoder): the sampler contract
    with classifier-free guidance (a doubled batch through the KV cache of ``trajectory``) and the loss
    contract, gradients reaching the encoder through the concatenated tokens."""
    from ntm.losses import EndToEndConfig
    from ntm.samplers import AncestralConfig
    from ntm.transporters import TarFlowConfig

    config = NTMConfig(transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, use_condition=True),
                       predictor=_config(kind, **PAPER))
    model = testing.build_text_model(config)
    testing.check_sampler(AncestralConfig(num_steps=2, guidance=2.0), model=model)
    testing.check_loss(EndToEndConfig(), model=model)
    ids = testing.text_conditioner().build().inputs(["a red circle", "two blue squares left of a cat", "x"])
    x = torch.randn(3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, _ = model(x, ids, EndToEndConfig().build(), torch.Generator().manual_seed(2))
    loss.backward()
    projection = model.predictor.net.cond_embed.token_proj.weight.grad
    assert projection is not None and projection.abs().max() > 0
