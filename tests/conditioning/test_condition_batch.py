"""Condition: the batch operations label tensors have, on pooled vectors, tokens and masks alike."""

from __future__ import annotations

import pytest
import torch

from ntm.conditioning import Condition, condition_batch, condition_cat, encode_condition


def make(b: int = 4, length: int = 3, d: int = 5, seed: int = 0, tokens: bool = True) -> Condition:
    gen = torch.Generator().manual_seed(seed)
    pooled = torch.randn(b, d, generator=gen)
    if not tokens:
        return Condition(pooled)
    lengths = torch.arange(b) % length + 1
    mask = torch.arange(length)[None] < lengths[:, None]
    return Condition(pooled, torch.randn(b, length, d, generator=gen), mask)


def same(a: Condition, b: Condition) -> bool:
    parts = [(a.pooled, b.pooled)]
    if a.tokens is not None or b.tokens is not None:
        parts += [(a.tokens, b.tokens), (a.mask, b.mask)]
    return all(x is not None and y is not None and x.dtype == y.dtype and torch.equal(x, y) for x, y in parts)


def test_shape_and_len_are_the_batch_like_a_label_tensor():
    c = make(4)
    assert c.shape == torch.Size([4]) and c.shape[0] == len(c) == 4
    assert condition_batch(c) == condition_batch(torch.arange(4)) == 4 and condition_batch(None) is None


@pytest.mark.parametrize("tokens", [True, False])
def test_indexing_repeat_and_cat_act_on_the_batch_like_labels(tokens):
    c = make(4, tokens=tokens)
    labels = torch.arange(4)
    for index in (slice(1, 3), torch.tensor([3, 0, 0]), torch.tensor([True, False, True, False])):
        part = c[index]
        rows = labels[index]
        assert same(part, Condition(c.pooled[rows], *(() if not tokens else (c.tokens[rows], c.mask[rows]))))
    assert same(c[2], c[2:3]) and same(c[-1], c[3:]) and len(c[0]) == 1  # an int gives a batch of one
    tiled = c.repeat(3)
    assert len(tiled) == 12 and same(tiled[8:12], c) and same(tiled, Condition.cat([c, c, c]))
    assert torch.equal(labels.repeat(3), torch.cat([labels] * 3))  # the label tensor's meaning of repeat
    both = condition_cat([c[:1], c[1:]])
    assert same(both, c)
    assert torch.equal(condition_cat([labels[:2], labels[2:]]), labels) and condition_cat([None, None]) is None


def test_to_moves_floats_and_keeps_the_mask_boolean():
    c = make(2)
    d = c.to(torch.float64)
    assert d.pooled.dtype == d.tokens.dtype == torch.float64 and d.mask.dtype == torch.bool
    assert torch.equal(d.mask, c.mask) and d.dtype == torch.float64 and d.device == c.device
    assert same(c.to("cpu"), c)


def test_bad_shapes_and_mixed_kinds_are_refused():
    c = make(2)
    with pytest.raises(ValueError, match="pooled must be"):
        Condition(torch.zeros(2))
    with pytest.raises(ValueError, match="both or neither"):
        Condition(c.pooled, c.tokens)
    with pytest.raises(ValueError, match="mask must be a bool"):
        Condition(c.pooled, c.tokens, c.mask.float())
    with pytest.raises(ValueError, match="some conditions have tokens"):
        Condition.cat([c, make(2, tokens=False)])
    with pytest.raises(TypeError, match="cannot mix"):
        condition_cat([torch.arange(2), c])
    with pytest.raises(ValueError, match="None"):
        condition_cat([None, c])


def test_encode_condition_asks_the_model_and_passes_through_otherwise():
    class Plain(torch.nn.Module):
        pass

    class Encoding(torch.nn.Module):
        def encode(self, cond, batch=None):
            return ("encoded", cond, batch)

    labels = torch.arange(3)
    assert encode_condition(Plain(), labels, 3) is labels
    assert encode_condition(Encoding(), labels, 3) == ("encoded", labels, 3)
