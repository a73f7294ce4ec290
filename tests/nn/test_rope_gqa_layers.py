"""2D rotary positions, grouped-query attention and the unmodulated block (``ntm/nn``), in float64.

RoPE: a query-key score depends on the (row, col) offset of the two positions only; half the head rotates with
the row, half with the column; (0, 0) is no rotation. GQA: with as many KV heads as query heads it is the
multi-head attention of the same weights; with fewer, query head ``h`` reads KV head ``h // group``, on both of
its code paths (torch's ``enable_gqa`` without a mask tensor, repeated K/V with one) and through a KV cache.
"""

from __future__ import annotations

import pytest
import torch

from ntm.nn import AdaLNBlock, Attention, FinalLayer, KVCache
from ntm.nn.attention import apply_rope
from ntm.nn.embeddings import grid_positions, rope_2d

HD = 16
"""Head dimension of the RoPE checks (4 pair frequencies per axis)."""


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scores(q: torch.Tensor, k: torch.Tensor, q_pos, k_pos) -> torch.Tensor:
    """``(Lq, Lk)`` dot products of RoPE-rotated ``q`` ``(Lq, HD)`` and ``k`` ``(Lk, HD)`` at ``(rows, cols)``."""
    qr = apply_rope(q, *rope_2d(*q_pos, HD))
    kr = apply_rope(k, *rope_2d(*k_pos, HD))
    return qr @ kr.T


def test_rope_scores_depend_only_on_the_position_offset():
    """Shifting every query and key position by the same (dr, dc) leaves every score unchanged (to 1e-12), while
    shifting the keys alone changes them: the invariance is relative, not a no-op."""
    gen = _gen()
    q = torch.randn(6, HD, generator=gen, dtype=torch.float64)
    k = torch.randn(5, HD, generator=gen, dtype=torch.float64)
    q_pos = (torch.tensor([0, 1, 2, 3, 0, 7]), torch.tensor([0, 4, 1, 3, 5, 2]))
    k_pos = (torch.tensor([2, 0, 6, 1, 3]), torch.tensor([1, 1, 0, 7, 4]))
    base = _scores(q, k, q_pos, k_pos)
    for dr, dc in [(1, 0), (0, 1), (3, -2), (-5, 9), (40, 17)]:
        shifted = _scores(q, k, (q_pos[0] + dr, q_pos[1] + dc), (k_pos[0] + dr, k_pos[1] + dc))
        torch.testing.assert_close(shifted, base, rtol=0, atol=1e-12)
    keys_only = _scores(q, k, q_pos, (k_pos[0] + 1, k_pos[1]))
    assert (keys_only - base).abs().max() > 1e-3


def test_rope_2d_turns_the_first_half_with_rows_and_the_second_with_columns():
    """A row offset and a column offset act on different halves of the head: moving the row changes channels
    ``< HD/2`` only, moving the column channels ``>= HD/2`` only; so a row shift and a column shift give different
    scores (two axes, not one flattened index)."""
    x = torch.randn(1, HD, generator=_gen(1), dtype=torch.float64)
    at = lambda r, c: apply_rope(x, *rope_2d(torch.tensor([r]), torch.tensor([c]), HD))[0]
    origin, down, right = at(0, 0), at(3, 0), at(0, 3)
    torch.testing.assert_close(origin, x[0], rtol=0, atol=0)  # (0, 0): no rotation
    assert (down[: HD // 2] - x[0, : HD // 2]).abs().max() > 1e-3
    torch.testing.assert_close(down[HD // 2 :], x[0, HD // 2 :], rtol=0, atol=0)
    assert (right[HD // 2 :] - x[0, HD // 2 :]).abs().max() > 1e-3
    torch.testing.assert_close(right[: HD // 2], x[0, : HD // 2], rtol=0, atol=0)
    for v in (down, right):  # rotations keep the norm
        torch.testing.assert_close(v.norm(), x.norm(), rtol=0, atol=1e-12)
    k = torch.randn(1, HD, generator=_gen(2), dtype=torch.float64)
    zero = (torch.tensor([0]), torch.tensor([0]))
    row = _scores(x, k, zero, (torch.tensor([1]), torch.tensor([0])))
    col = _scores(x, k, zero, (torch.tensor([0]), torch.tensor([1])))
    assert (row - col).abs().max() > 1e-6


def test_rope_needs_a_head_dimension_divisible_by_four_and_a_grid_that_holds_the_tokens():
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        rope_2d(torch.tensor([0]), torch.tensor([0]), 6)
    with pytest.raises(ValueError, match="token grid 2x3 does not hold 5 tokens"):
        grid_positions(5, (2, 3))
    rows, cols = grid_positions(6, (2, 3))
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]


def test_attention_with_rope_is_invariant_to_shifting_every_position():
    """Through the whole self-attention layer (full mask): the output at shifted positions equals the output at
    the original ones; a bfloat16 input is rotated in float32 and returned in bfloat16."""
    torch.manual_seed(0)
    attn = Attention(32, 2).double()
    x = torch.randn(2, 6, 32, generator=_gen(3), dtype=torch.float64)
    rows, cols = grid_positions(6, (2, 3))
    base = attn(x, rope=rope_2d(rows, cols, HD))
    torch.testing.assert_close(attn(x, rope=rope_2d(rows + 5, cols + 2, HD)), base, rtol=0, atol=1e-12)
    assert (attn(x) - base).abs().max() > 1e-6
    cos, sin = rope_2d(rows, cols, HD)
    assert apply_rope(x.to(torch.bfloat16).reshape(2, 6, 2, HD).transpose(1, 2), cos, sin).dtype == torch.bfloat16


def _mha_to_gqa(mha: Attention, gqa: Attention) -> None:
    """Copy ``mha``'s fused ``qkv`` weights into ``gqa``'s separate ``q`` / ``kv`` (same number of heads)."""
    dim = mha.proj.in_features
    with torch.no_grad():
        gqa.q.weight.copy_(mha.qkv.weight[:dim])
        gqa.q.bias.copy_(mha.qkv.bias[:dim])
        gqa.kv.weight.copy_(mha.qkv.weight[dim:])
        gqa.kv.bias.copy_(mha.qkv.bias[dim:])
        gqa.proj.load_state_dict(mha.proj.state_dict())


@pytest.mark.parametrize("mask", ["full", "causal", "tensor"])
def test_gqa_with_as_many_kv_heads_as_heads_is_mha_with_the_same_weights(mask):
    torch.manual_seed(0)
    mha = Attention(32, 4).double()
    gqa = Attention(32, 4, num_kv_heads=4).double()
    assert not gqa.fused and {n for n, _ in gqa.named_parameters()} == {"q.weight", "q.bias", "kv.weight", "kv.bias",
                                                                         "proj.weight", "proj.bias"}
    _mha_to_gqa(mha, gqa)
    x = torch.randn(3, 5, 32, generator=_gen(4), dtype=torch.float64)
    m = torch.rand(5, 5, generator=_gen(5)) < 0.6 if mask == "tensor" else mask
    if mask == "tensor":
        m |= torch.eye(5, dtype=torch.bool)
    rope = rope_2d(*grid_positions(5, (1, 5)), 8)
    torch.testing.assert_close(gqa(x, mask=m), mha(x, mask=m), rtol=0, atol=1e-12)
    torch.testing.assert_close(gqa(x, mask=m, rope=rope), mha(x, mask=m, rope=rope), rtol=0, atol=1e-12)


def _reference_gqa(attn: Attention, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention written out: query head ``h`` against key/value head ``h // group``."""
    b, length, dim = x.shape
    h, hk = attn.num_heads, attn.num_kv_heads
    hd, group = dim // h, h // hk
    q = attn.q(x).reshape(b, length, h, hd)
    k, v = attn.kv(x).reshape(b, length, 2, hk, hd).unbind(2)
    out = torch.empty(b, length, h, hd, dtype=x.dtype)
    for head in range(h):
        scores = torch.einsum("bld,bmd->blm", q[:, :, head], k[:, :, head // group]) / hd**0.5
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, :, head] = torch.einsum("blm,bmd->bld", scores.softmax(-1), v[:, :, head // group])
    return attn.proj(out.reshape(b, length, dim))


def test_gqa_query_groups_share_their_kv_head_on_both_code_paths_and_through_the_cache():
    """4 query heads over 2 KV heads: equal to the written-out reference without a mask (``enable_gqa``), with a
    mask tensor (K/V repeated), causally, and when fed one position at a time through a KV cache, which then
    holds 2 heads per layer."""
    torch.manual_seed(0)
    attn = Attention(32, 4, num_kv_heads=2).double()
    assert attn.kv.out_features == 2 * 2 * 8  # keys and values of 2 heads of 8
    x = torch.randn(2, 6, 32, generator=_gen(6), dtype=torch.float64)
    torch.testing.assert_close(attn(x), _reference_gqa(attn, x, None), rtol=0, atol=1e-12)
    allowed = torch.rand(6, 6, generator=_gen(7)) < 0.5
    allowed |= torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(attn(x, mask=allowed), _reference_gqa(attn, x, allowed), rtol=0, atol=1e-12)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    full_causal = attn(x, mask="causal")
    torch.testing.assert_close(full_causal, _reference_gqa(attn, x, causal), rtol=0, atol=1e-12)
    cache = KVCache()
    stepped = torch.cat([attn(x[:, i : i + 1], mask="causal", cache=cache) for i in range(6)], dim=1)
    torch.testing.assert_close(stepped, full_causal, rtol=0, atol=1e-12)
    assert cache._kv[0][0].shape == (2, 2, 6, 8)


def test_gqa_refuses_kv_heads_that_do_not_divide_the_heads():
    with pytest.raises(ValueError, match=r"num_kv_heads \(3\) must divide num_heads \(4\)"):
        Attention(32, 4, num_kv_heads=3)


def test_defaults_build_the_layers_they_always_did():
    """No option given: the fused qkv projection, the block's adaLN projection and the final layer's, so
    checkpoints of every existing model load unchanged (their parameter names)."""
    assert [n for n, _ in Attention(16, 2).named_parameters()] == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    names = [n for n, _ in AdaLNBlock(16, 2, 16).named_parameters()]
    assert names == ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight",
                     "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ada.1.weight", "ada.1.bias"]
    assert [n for n, _ in FinalLayer(16, 16, 3).named_parameters()] == ["ada.1.weight", "ada.1.bias", "linear.weight",
                                                                        "linear.bias"]


def test_a_block_without_modulation_is_a_plain_pre_norm_block_that_ignores_the_context():
    torch.manual_seed(0)
    block = AdaLNBlock(16, 2, 16, modulation=False).double()
    final = FinalLayer(16, 16, 3, modulation=False).double()
    assert block.ada is None and final.ada is None and block.norm1.weight is not None
    assert final.linear.weight.abs().max() == 0  # the read-out still starts at zero
    x = torch.randn(2, 4, 16, generator=_gen(8), dtype=torch.float64)
    c1, c2 = (torch.randn(2, 1, 16, generator=_gen(s), dtype=torch.float64) for s in (9, 10))
    torch.testing.assert_close(block(x, c1), block(x, c2), rtol=0, atol=0)
    manual = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x, c1), manual + block.mlp(block.norm2(manual)), rtol=0, atol=1e-12)


def test_a_token_layout_knows_its_grid():
    """``TokenLayout.grid`` is the row-major grid patchify lays tokens on (what 2D RoPE reads)."""
    from ntm.nn import TokenLayout, patchify

    layout = TokenLayout((3, 8, 12), patch_size=2)
    assert layout.grid == (4, 6) and layout.grid[0] * layout.grid[1] == layout.num_tokens
    assert TokenLayout((5,)).grid == (1, 5)
    x = torch.zeros(1, 3, 8, 12)
    x[0, :, 2:4, 10:12] = 1.0  # the patch at row 1, column 5
    rows, cols = grid_positions(layout.num_tokens, layout.grid)
    hot = patchify(x, 2)[0].sum(-1).nonzero().item()
    assert (rows[hot].item(), cols[hot].item()) == (1, 5)
