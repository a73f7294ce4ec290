"""2-D toy sources: spec, determinism, resumption, rank splits, held-out set, shapes of the distributions."""

from __future__ import annotations

import itertools
import math

import pydantic
import pytest
import torch

from ntm.data import DATA_SOURCES, CheckerboardConfig, MixtureConfig, MoonsConfig, SpiralsConfig, ToySource
from ntm.data.mixture import GaussianMixture

TOYS = ["eight-gaussians", "checkerboard", "moons", "spirals", "mixture"]


def build(name: str, **fields) -> ToySource:
    return DATA_SOURCES.get(name).config_cls(**fields).build()


def take(stream, n: int) -> list:
    return list(itertools.islice(stream, n))


def test_all_toys_registered():
    assert set(TOYS) <= set(DATA_SOURCES.names())


@pytest.mark.parametrize("name", TOYS)
def test_spec_and_batch_shape(name):
    source = build(name)
    assert source.spec.shape == (2,) and source.spec.num_classes == 0 and source.spec.kind == "points"
    batch = next(source.train_batches(64, seed=0))
    assert batch.x.shape == (64, 2) and batch.x.dtype == torch.float32
    assert torch.isfinite(batch.x).all() and batch.label is None
    assert batch.x.abs().max() < 10  # all toys live within a few units of the origin
    assert torch.equal(source.to_display(batch.x), batch.x)


@pytest.mark.parametrize("name", TOYS)
def test_same_seed_and_step_give_identical_batches(name):
    a = take(build(name).train_batches(32, seed=3), 3)
    b = take(build(name).train_batches(32, seed=3), 3)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x)
    assert not torch.equal(a[0].x, a[1].x)  # different steps differ
    other = next(build(name).train_batches(32, seed=4))
    assert not torch.equal(a[0].x, other.x)  # different seeds differ


@pytest.mark.parametrize("name", TOYS)
def test_start_step_matches_kth_batch_of_fresh_stream(name):
    source = build(name)
    fresh = take(source.train_batches(16, seed=1), 6)
    resumed = take(source.train_batches(16, seed=1, start_step=4), 2)
    assert torch.equal(resumed[0].x, fresh[4].x) and torch.equal(resumed[1].x, fresh[5].x)


@pytest.mark.parametrize("name", TOYS)
def test_ranks_partition_the_global_batch(name):
    source = build(name)
    single = take(source.train_batches(20, seed=2, start_step=5), 3)
    ranks = [take(source.train_batches(10, seed=2, start_step=5, rank=r, world_size=2), 3) for r in range(2)]
    for step in range(3):
        assert torch.equal(torch.cat([ranks[0][step].x, ranks[1][step].x]), single[step].x)
    assert not torch.equal(ranks[0][0].x, ranks[1][0].x)


@pytest.mark.parametrize("name", TOYS)
def test_held_out_set_is_fixed_and_separate(name):
    source = build(name, num_eval=100)
    batches = list(source.eval_batches(32))
    assert [b.x.shape[0] for b in batches] == [32, 32, 32, 4]
    held_out = torch.cat([b.x for b in batches])
    assert held_out.dtype == torch.float32
    assert torch.equal(held_out, torch.cat([b.x for b in build(name, num_eval=100).eval_batches(50)]))
    assert sum(b.x.shape[0] for b in source.eval_batches(32, max_examples=40)) == 40
    # a different stream from training, even with the same seed value
    train = next(source.train_batches(100, seed=0)).x
    assert not torch.equal(held_out, train)
    assert not torch.equal(held_out, torch.cat([b.x for b in build(name, num_eval=100, seed=1).eval_batches(100)]))


def test_eight_gaussians_is_the_oracle_ring():
    source = build("eight-gaussians")
    ring = GaussianMixture.ring(8, 2.0, 0.2)
    assert torch.equal(source.mixture.means, ring.means) and torch.equal(source.mixture.variances, ring.variances)
    x = next(source.train_batches(8000, seed=0)).x.double()
    nearest = torch.cdist(x, ring.means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=8).double() / x.shape[0]
    assert (counts - 1 / 8).abs().max() < 0.02
    resid = x - ring.means[nearest]
    assert abs(resid.std().item() - 0.2) < 0.01
    assert source.stats()["mixture"] == ring.to_dict()


def test_mixture_default_is_the_ring_and_custom_mixtures_work():
    default = build("mixture").mixture
    ring = GaussianMixture.ring()
    assert torch.allclose(default.means, ring.means) and torch.allclose(default.weights, ring.weights)
    config = MixtureConfig(weights=(0.25, 0.75), means=((0.0, 0.0, 0.0), (4.0, 0.0, 0.0)), variances=(1.0, 0.25))
    source = config.build()
    assert source.spec.shape == (3,)
    x = next(source.train_batches(20000, seed=0)).x.double()
    assert x.shape == (20000, 3)
    assert torch.allclose(x.mean(0), torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), atol=0.05)
    # the CLI's flat, row-major form is the same mixture
    flat = MixtureConfig(weights=(0.25, 0.75), means=(0.0, 0.0, 0.0, 4.0, 0.0, 0.0), variances=(1.0, 0.25))
    assert flat == config and torch.equal(flat.mixture().means, source.mixture.means)
    # the oracle density prefers the source's samples to the same points shifted off the components
    assert source.mixture.log_prob(x).mean() > source.mixture.log_prob(x + 2.0).mean() + 1.0


@pytest.mark.parametrize(
    "fields",
    [
        {"weights": (0.5, 0.6), "means": ((0.0, 0.0), (1.0, 1.0)), "variances": (1.0, 1.0)},
        {"weights": (0.5, 0.5), "means": ((0.0, 0.0), (1.0,)), "variances": (1.0, 1.0)},
        {"weights": (1.0,), "means": ((0.0, 0.0),), "variances": (-1.0,)},
        {"weights": (0.5, 0.5), "means": ((0.0, 0.0),), "variances": (1.0, 1.0)},
        {"weights": (0.5, 0.5), "means": (0.0, 0.0, 1.0), "variances": (1.0, 1.0)},
    ],
)
def test_inconsistent_mixture_is_rejected(fields):
    with pytest.raises(pydantic.ValidationError):
        MixtureConfig(**fields)


def test_checkerboard_fills_only_even_squares():
    config = CheckerboardConfig(cells=4, half_width=2.0)
    x = next(config.build().train_batches(5000, seed=0)).x.double()
    assert (x.abs() <= 2.0).all()
    cell = torch.floor((x + 2.0) / 1.0).long().clamp(0, 3)
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    assert torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).count_nonzero() == 8


def test_moons_two_half_circles():
    config = MoonsConfig(noise=0.0, scale=1.0)
    x = next(config.build().train_batches(2000, seed=0)).x.double()
    upper_centre = torch.tensor([-0.5, -0.25], dtype=torch.float64)
    lower_centre = torch.tensor([0.5, 0.25], dtype=torch.float64)
    # noise-free points lie on a unit circle around one of the two centres
    dist = torch.stack([(x - upper_centre).norm(dim=1), (x - lower_centre).norm(dim=1)], dim=1)
    assert ((dist - 1).abs().min(dim=1).values < 1e-5).all()
    on_upper = (dist[:, 0] - 1).abs() < 1e-5
    assert 0.4 < on_upper.double().mean() < 0.6


def test_spirals_radius_grows_with_angle():
    config = SpiralsConfig(num_arms=2, turns=1.5, radius=2.0, noise=0.0)
    x = next(config.build().train_batches(2000, seed=0)).x.double()
    r = x.norm(dim=1)
    assert r.max() <= 2.0 + 1e-6
    s = r / 2.0
    angle = torch.atan2(x[:, 1], x[:, 0])
    # each point's angle is 2 pi (turns s + arm / 2) for arm 0 or 1 (mod 2 pi)
    ok = torch.zeros_like(r, dtype=torch.bool)
    for arm in range(2):
        expected = 2 * math.pi * (1.5 * s + arm / 2)
        diff = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
        ok |= diff.abs() < 1e-4
    assert ok.all()


@pytest.mark.parametrize("name", TOYS)
def test_config_round_trips_through_the_registry(name):
    config = DATA_SOURCES.get(name).config_cls(seed=5, num_eval=10)
    assert DATA_SOURCES.load(DATA_SOURCES.dump(config)) == config


def test_bad_stream_arguments_are_rejected():
    source = build("moons")
    with pytest.raises(ValueError, match="rank"):
        next(source.train_batches(4, seed=0, rank=2, world_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        next(source.train_batches(0, seed=0))
