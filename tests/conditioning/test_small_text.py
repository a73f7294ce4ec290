"""conditioner:small-text: open_clip token ids, the null-row convention, condition dropout, the encoder."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ntm.conditioning import CONDITIONERS, NULL_TOKEN, Condition, SmallTextConfig
from ntm.conditioning.text import (
    EOT_TOKEN,
    SOT_TOKEN,
    VOCAB_SIZE,
    clip_tokenizer,
    tokenize,
)
from ntm.spec import ModelDims

CAPTIONS = ["a red circle", "two blue squares left of a green triangle", "A Red Circle!", "x"]
TINY = SmallTextConfig(context_length=8, width=16, depth=1, num_heads=2)


def test_registered_with_its_field_and_dims():
    assert "small-text" in CONDITIONERS.names()
    assert CONDITIONERS.load({"name": "small-text", "width": 64}) == SmallTextConfig(width=64)
    cfg = SmallTextConfig()
    assert (cfg.context_length, cfg.width, cfg.depth) == (32, 128, 2)
    assert SmallTextConfig.reads == cfg.build().reads == "caption"
    assert cfg.model_dims(10) == {"cond_dim": 128, "cond_len": 32}  # the labels of the data are not read
    with pytest.raises(pydantic.ValidationError):
        SmallTextConfig(width=30, num_heads=4)


def test_token_ids_are_open_clips_offline():
    """The vocabulary ships with open_clip (nothing downloads); rows are laid out as open_clip.tokenize does."""
    tokenizer = clip_tokenizer()
    assert (tokenizer.vocab_size, tokenizer.sot_token_id, tokenizer.eot_token_id) == (VOCAB_SIZE, SOT_TOKEN, EOT_TOKEN)
    ids, longest = tokenize(CAPTIONS, 8)
    assert torch.equal(ids, tokenizer(CAPTIONS, context_length=8)) and ids.dtype == torch.int64
    assert longest == len(tokenizer.encode(CAPTIONS[1])) + 2 > 8  # the second caption was cut
    assert torch.equal(ids[0, :4], ids[2, :4]) and ids[2, 4] != EOT_TOKEN  # lower-cased; "!" is one more token
    import open_clip

    assert torch.equal(tokenize(CAPTIONS, 77)[0], open_clip.tokenize(CAPTIONS))


def test_empty_and_missing_captions_are_the_null_row():
    ids, _ = tokenize(["", "   ", None, "a"], 6)
    assert (ids[:3] == NULL_TOKEN).all() and ids[3, 0] == SOT_TOKEN
    conditioner = TINY.replace(dropout=0.0).build()
    out = conditioner(["", "a square"], 0, torch.Generator().manual_seed(0))
    assert (out[0] == NULL_TOKEN).all() and out[1, 0] == SOT_TOKEN
    assert conditioner(None, 0) is None  # a batch without captions: the model's null condition


def test_truncation_warns_once_per_conditioner(capsys):
    conditioner = TINY.build()
    long = "one two three four five six seven eight nine ten"
    for _ in range(3):
        conditioner.inputs([long, long], 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated to conditioner.context_length = 8" in err[0]
    ids = conditioner.inputs([long], 0)
    assert ids[0, -1] == EOT_TOKEN  # the end-of-text token is kept


def test_dropout_rate_and_determinism():
    conditioner = TINY.replace(dropout=0.3).build()
    captions = ["a red circle"] * 20_000
    a = conditioner(captions, 0, torch.Generator().manual_seed(1))
    b = conditioner(captions, 0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dropped = (a == NULL_TOKEN).all(dim=1)
    assert abs(dropped.double().mean().item() - 0.3) < 0.02  # binomial std 0.0032 at n = 2e4
    kept = a[~dropped]
    assert torch.equal(kept, kept[:1].expand_as(kept))
    assert torch.equal(conditioner.inputs(captions[:3], 0), tokenize(captions[:3], 8)[0])  # inputs: no dropout


def encoder(seed: int = 0):
    torch.manual_seed(seed)
    return TINY.encoder(ModelDims(4, 1, **TINY.model_dims(0))).double()


def test_encoder_pools_the_end_of_text_token_and_masks_padding():
    enc = encoder()
    ids = TINY.replace(dropout=0.0).build().inputs(["a red circle", "x", ""], 0)
    c = enc(ids)
    assert isinstance(c, Condition) and c.pooled.shape == (3, 16) and c.tokens.shape == (3, 8, 16)
    ends = ids.argmax(dim=1)
    assert int(ends[0]) == 4 and int(ends[1]) == 2
    assert torch.equal(c.mask[0], torch.arange(8) <= 4) and torch.equal(c.mask[1], torch.arange(8) <= 2)
    assert torch.equal(c.pooled[0], c.tokens[0, 4]) and torch.equal(c.pooled[1], c.tokens[1, 2])
    # causal: padding after the end of text changes nothing before it; a row is independent of the others
    alone = enc(ids[:1])
    assert torch.allclose(alone.pooled, c.pooled[:1], atol=1e-12)


def test_null_rows_get_the_learned_null_condition():
    enc = encoder()
    ids = TINY.replace(dropout=0.0).build().inputs(["a red circle", "", "x"], 0)
    c = enc(ids)
    null = enc.null(3)
    assert torch.equal(c.pooled[1], null.pooled[1]) and torch.equal(c.tokens[1], null.tokens[1])
    assert torch.equal(c.mask[1], null.mask[1]) and c.mask[1].sum() == 1
    assert torch.equal(null.pooled[0], enc.null_pooled) and torch.equal(null.tokens[0, 0], enc.null_token)
    # the null is learned: gradients reach it through dropped rows
    c.pooled.sum().backward()
    assert enc.null_pooled.grad is not None and enc.null_pooled.grad.abs().sum() > 0
    # shorter id rows are padded to the context length; malformed rows are refused
    assert enc(ids[:, :6]).tokens.shape == (3, 8, 16)
    with pytest.raises(ValueError, match="end-of-text"):
        enc(torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        enc(torch.ones(1, 8))


def test_encoder_is_a_parameter_group_and_shards_its_blocks():
    enc = encoder()
    assert list(enc.param_groups()) == ["condition_encoder"]
    assert len(enc.shard_units()) == TINY.depth
    assert sum(p.numel() for p in enc.param_groups()["condition_encoder"]) == sum(p.numel() for p in enc.parameters())
