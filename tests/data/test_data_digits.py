"""digits: spec, normalisation, determinism, resumption, rank splits and the held-out split."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from sklearn.datasets import load_digits

from ntm.data import DATA_SOURCES, Digits, DigitsConfig


@pytest.fixture(scope="module")
def digits() -> Digits:
    return DigitsConfig().build()


def take(stream, n: int) -> list:
    return list(itertools.islice(stream, n))


def rows(x: torch.Tensor, label: torch.Tensor) -> Counter:
    """Multiset of (pixels, label) examples."""
    return Counter(tuple(xi.flatten().tolist()) + (int(li),) for xi, li in zip(x, label))


def test_registered_and_spec(digits):
    assert "digits" in DATA_SOURCES.names()
    assert digits.spec.shape == (1, 8, 8) and digits.spec.num_classes == 10 and digits.spec.kind == "images"


def test_batch_dtype_range_and_grid(digits):
    batch = next(digits.train_batches(64, seed=0))
    assert batch.x.shape == (64, 1, 8, 8) and batch.x.dtype == torch.float32
    assert batch.label.shape == (64,) and batch.label.dtype == torch.int64
    assert batch.x.min() >= -1 and batch.x.max() <= 1
    grey = (batch.x + 1) / 2 * 16  # back to the 17 grey levels 0..16
    assert torch.equal(grey, grey.round())
    assert ((batch.label >= 0) & (batch.label < 10)).all()
    assert digits.stats()["normalisation"] == "x / 16 * 2 - 1"


def test_normalisation_matches_sklearn(digits):
    data = load_digits()
    expected = torch.as_tensor(data.images, dtype=torch.float32)[digits.eval_indices] / 16 * 2 - 1
    held_out = torch.cat([b.x for b in digits.eval_batches(100)])
    assert torch.equal(held_out[:, 0], expected)
    labels = torch.cat([b.label for b in digits.eval_batches(100)])
    assert torch.equal(labels, torch.as_tensor(data.target)[digits.eval_indices])


def test_to_display_maps_to_unit_interval(digits):
    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    assert torch.equal(digits.to_display(x), torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3))


def test_determinism(digits):
    a = take(digits.train_batches(32, seed=7), 3)
    b = take(DigitsConfig().build().train_batches(32, seed=7), 3)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.label, y.label)
    assert not torch.equal(a[0].x, a[1].x)
    assert not torch.equal(a[0].x, next(digits.train_batches(32, seed=8)).x)


def test_start_step_matches_fresh_stream_across_epoch_boundary(digits):
    # 1527 training images / 100 per step: step 15 straddles epochs 0 and 1
    fresh = take(digits.train_batches(100, seed=0), 18)
    resumed = take(digits.train_batches(100, seed=0, start_step=14), 4)
    for k, batch in enumerate(resumed):
        assert torch.equal(batch.x, fresh[14 + k].x) and torch.equal(batch.label, fresh[14 + k].label)


def test_ranks_partition_the_global_batch(digits):
    start = 1527 // 14 - 1  # near the end of epoch 0, so some global batches straddle two epochs
    single = take(digits.train_batches(14, seed=3, start_step=start), 4)
    ranks = [take(digits.train_batches(7, seed=3, start_step=start, rank=r, world_size=2), 4) for r in range(2)]
    for step in range(4):
        assert torch.equal(torch.cat([ranks[0][step].x, ranks[1][step].x]), single[step].x)
        assert torch.equal(torch.cat([ranks[0][step].label, ranks[1][step].label]), single[step].label)


def test_one_epoch_covers_the_training_split_once(digits):
    n = digits.num_train
    epoch = next(digits.train_batches(n, seed=11))
    assert rows(epoch.x, epoch.label) == rows(digits.normalise(digits.train_x), digits.train_label)


def test_held_out_split_is_disjoint_and_fixed(digits):
    train, held = set(digits.train_indices.tolist()), set(digits.eval_indices.tolist())
    assert not train & held and len(train | held) == 1797
    assert len(held) == round(0.15 * 1797) == digits.num_eval
    assert torch.equal(DigitsConfig().build().eval_indices, digits.eval_indices)
    assert not torch.equal(DigitsConfig(seed=1).build().eval_indices, digits.eval_indices)
    assert DigitsConfig(eval_fraction=0.5).build().num_eval == round(0.5 * 1797)
    # the training stream draws from train_x only, which holds exactly the training indices
    images = torch.as_tensor(load_digits().images, dtype=torch.uint8).reshape(-1, 1, 8, 8)
    assert torch.equal(digits.train_x, images[digits.train_indices])
    assert torch.equal(digits.eval_x, images[digits.eval_indices])


def test_eval_batches_sizes(digits):
    sizes = [b.x.shape[0] for b in digits.eval_batches(128)]
    assert sizes == [128, 128, 14]
    assert sum(b.x.shape[0] for b in digits.eval_batches(128, max_examples=200)) == 200
