"""ntm.experiments.bench.scaling: dims without data, parameter counts, the FLOP formula and the memory estimate, each
against what the built model really has, runs and saves."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ntm.experiments.cli import main
from ntm.experiments.presets import PRESETS
from ntm.experiments.bench.scaling import (
    activation_bytes,
    checkpoint_blocks,
    max_micro_batch,
    memory_estimate,
    meta_model,
    model_dims,
    param_counts,
    train_flops,
)
from ntm.spec import ModelDims


def small_digits():
    """digits-ntm at width 64: 16 tokens of 4, K = 4, the trajectory predictor (64-token sequences)."""
    exp = PRESETS["digits-ntm"]
    return exp.replace(model=exp.model.replace(transporter=exp.model.transporter.replace(width=64),
                                               predictor=exp.model.predictor.replace(width=64)))


def test_paper_dims_and_parameter_counts_without_data_or_weights():
    exp = PRESETS["imagenet-paper"]  # its shards and autoencoder weights do not exist here
    assert model_dims(exp) == ModelDims(num_tokens=256, token_dim=128, num_classes=1000)
    counts = param_counts(meta_model(exp))
    assert counts["total"] == counts["transporter"] + counts["predictor"]
    assert 5e8 < counts["total"] < 6e8 and counts["largest_unit"] < counts["total"] / 20


def test_meta_counts_equal_the_built_model():
    exp = small_digits()
    dims = model_dims(exp)
    assert dims == ModelDims(num_tokens=16, token_dim=4, num_classes=10)
    built = exp.model.build(dims)
    counts = param_counts(meta_model(exp))
    assert counts["total"] == sum(p.numel() for p in built.parameters())
    assert counts["predictor"] == sum(p.numel() for p in built.predictor.parameters())
    units = [sum(p.numel() for p in m.parameters()) for m in built.shard_units()]
    assert counts["largest_unit"] == max(units) and counts["root"] == counts["total"] - sum(units)


def _run_loss(model, exp, batch: int):
    dims = model.dims
    x = torch.randn(batch, dims.num_tokens, dims.token_dim, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % dims.num_classes
    return model(x, labels, exp.loss.build(), torch.Generator().manual_seed(0))[0]


def test_flop_formula_matches_the_flop_counter():
    exp = small_digits()
    torch.manual_seed(0)
    model = exp.model.build(model_dims(exp))
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:  # attention as countable matmuls
        _run_loss(model, exp, 2).backward()
    formula = train_flops(exp)
    assert abs(formula["total"] / (counter.get_total_flops() / 2) - 1) < 0.03
    assert formula["predictor"] > formula["transporter.block0"] == formula["transporter.block1"]


def test_activation_estimate_matches_the_saved_tensors_and_state_is_sharded():
    exp = small_digits()
    torch.manual_seed(0)
    model = exp.model.build(model_dims(exp))

    def saved(batch: int) -> int:
        sizes: dict[int, int] = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _run_loss(model, exp, batch)
        return sum(sizes.values())

    per_example = (saved(8) - saved(4)) / 4
    fp32 = {"precision": "fp32", "gpus": 1}
    estimate = memory_estimate(exp, micro_batch=1, **fp32)
    assert 0.8 < estimate["activations"] / per_example < 1.2
    p = estimate["params"]
    assert estimate["weights"] == 0 and estimate["state"] == p * 20  # fp32 master, gradients, AdamW, EMA
    assert memory_estimate(exp, gpus=8, micro_batch=1, precision="fp32")["state"] == p * 20 / 8
    assert memory_estimate(exp, micro_batch=4, **fp32)["activations"] == pytest.approx(4 * estimate["activations"])
    levels = [memory_estimate(exp, micro_batch=1, activation_checkpointing=ac, **fp32)["activations"]
              for ac in ("none", "selective", "full")]
    assert levels[0] > levels[1] > levels[2] and levels[2] < levels[0] / 2
    autocast = memory_estimate(exp, gpus=8, micro_batch=1)
    policy = memory_estimate(exp, gpus=8, micro_batch=1, mixed_precision="bf16")
    assert autocast["weights"] > 2 * p > policy["weights"] > 0  # autocast caches a bf16 copy of every weight
    kept = memory_estimate(exp, gpus=8, micro_batch=1, mixed_precision="bf16", reshard_after_forward=False)
    assert kept["weights"] > 2 * p
    fits = max_micro_batch(exp, capacity_gib=4.0, reserve_gib=1.0, gpus=1)
    assert memory_estimate(exp, gpus=1, micro_batch=fits)["total"] <= 3 * 2**30 < \
        memory_estimate(exp, gpus=1, micro_batch=fits + 1)["total"]
    assert activation_bytes(True, 4.0) > activation_bytes(False, 4.0) > 0  # a per-token adaLN context saves more


def test_checkpointed_blocks_give_the_same_gradients():
    exp = small_digits()
    torch.manual_seed(0)
    model = exp.model.build(model_dims(exp))
    _run_loss(model, exp, 3).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert checkpoint_blocks(model) == 2 * 2 + 4  # TarFlow 2 x 2 layers + 4 predictor blocks
    _run_loss(model, exp, 3).backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-6)


def test_main_prints_the_memory_table(capsys):
    assert main(["bench", "scaling", "imagenet-paper", "--gpus", "8", "64"]) == 0
    out = capsys.readouterr().out
    assert "549.3 M" in out and "training FLOPs per example" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 8 ", "| 64 "))]
    assert len(rows) == 6 and "| 128 | none |" in rows[0] and "| 16 | full |" in rows[5]
