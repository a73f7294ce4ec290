"""The Python API (ntm.load -> ntm.Model): sampling, likelihood and classification agree with the commands' own
code paths, and bad input is one line naming the argument."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import ntm
from ntm.eval.nll import heldout_nll
from ntm.experiments.build import conditioner_of, layout_for, sample as build_sample
from ntm.experiments.likelihood import classify_run
from ntm.experiments.runs import load_run


@pytest.fixture(scope="module")
def digits(digits_run):
    return ntm.load(digits_run, device="cpu")


@pytest.fixture(scope="module")
def toy(toy_run):
    return ntm.load(toy_run, device="cpu")


def test_import_ntm_is_light_and_the_facade_lists_its_names():
    code = ("import sys, ntm; assert 'ntm.experiments' not in sys.modules, sorted(sys.modules); "
            "assert {'load', 'Model', 'ArgumentError', 'ExportError'} <= set(dir(ntm)); "
            "from ntm import model; import ntm.model as m2; assert model is m2; "
            "f = ntm.load; assert 'ntm.experiments.api' in sys.modules and f is ntm.load; "
            "assert ntm.Model.__module__ == 'ntm.experiments.api'; "
            "import pytest\n"
            "with pytest.raises(AttributeError): ntm.no_such_name")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attributes(digits, toy):
    assert digits.conditioning == "labels" and digits.num_classes == 10 and digits.class_names is None
    assert digits.image_shape == digits.data_shape == (1, 8, 8) and digits.kind == "images" and not digits.is_latent
    assert digits.steps == (4,) and digits.step == 2 and digits.weights == "ema" and digits.dims == 64
    assert digits.experiment is digits.config and digits.experiment.name == "digits-ntm"
    assert isinstance(digits.network, torch.nn.Module) and not digits.network.training
    assert "digits-ntm" in repr(digits) and "class-conditional" in repr(digits)
    assert toy.conditioning == "none" and toy.num_classes == 0 and toy.kind == "points" and toy.image_shape == (2,)


def test_sample_is_what_the_run_samples_in_display_range(digits, digits_run):
    images = digits.sample(16)
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, digits.sample(16))  # seeded by the run's eval.seed
    assert not torch.equal(images, digits.sample(16, seed=5))
    exp, data, model = load_run(digits_run)
    labels = torch.tensor([3, 3, 7, 7])
    want = data.to_display(build_sample(exp, model, data, 4, labels=labels, seed=2))  # what ntm sample draws
    assert torch.equal(digits.sample(labels=[3, 3, 7, 7], seed=2), want)
    assert torch.equal(digits.sample(4, labels=[3, 7], seed=2), want)  # each label repeated n / 2 times
    z = digits.sample(3, denoiser="none", space="data", steps=4, guidance=0.5, temperature=0.9)
    assert z.shape == (3, 1, 8, 8)
    assert torch.equal(digits.to_display(z), ((z + 1) / 2).clamp(0, 1))
    assert digits.sample(2, labels=5).shape == (2, 1, 8, 8)


def test_nll_matches_heldout_nll_and_its_units(digits, digits_run):
    exp, data, model = load_run(digits_run)
    batches = list(data.eval_batches(500, max_examples=64))
    x = torch.cat([b.x for b in batches])
    labels = torch.cat([b.label for b in batches])
    want = heldout_nll(model, data, layout_for(exp, data), [4], batch_size=500, max_examples=64, seed=exp.eval.seed,
                       conditioner=conditioner_of(exp.conditioner))[4]
    bpd = digits.bits_per_dim(x, labels, space="data")
    assert bpd.shape == (64,) and bpd.dtype == torch.float64
    assert bpd.mean().item() == pytest.approx(want["nll_traj_bpd"], rel=1e-6)
    bound = digits.nll(x, labels, space="data", kind="bound", bits_per_dim=True)
    assert bound.mean().item() == pytest.approx(want["bound_bpd"], rel=1e-6)
    nats = digits.nll(x, labels, space="data")
    assert torch.allclose(nats / (4 * 64 * math.log(2)), bpd)
    # display space: the same images in [0, 1] score the same
    assert torch.allclose(digits.nll((x + 1) / 2, labels), nats, rtol=1e-5)
    assert digits.nll(x[0], 3, space="data").shape == (1,)  # one example, one label for all
    unconditional = digits.nll(x, space="data")
    assert torch.isfinite(unconditional).all() and not torch.equal(unconditional, nats)


def test_classify_is_ntm_eval_classify(digits, digits_run):
    exp, data, model = load_run(digits_run)
    x = torch.cat([b.x for b in data.eval_batches(256, max_examples=16)])
    labels = torch.cat([b.label for b in data.eval_batches(256, max_examples=16)])
    want = classify_run(exp, data, model, num_steps=4, trajectories=1, max_examples=16)
    probs = digits.class_probabilities(x, trajectories=1, space="data")
    assert probs.shape == (16, 10) and torch.allclose(probs.sum(1), torch.ones(16, dtype=probs.dtype))
    assert (probs.argmax(1) == labels).double().mean().item() == pytest.approx(want["traj"]["accuracy"])
    iw = digits.classify(x, trajectories=1, space="data", score="iw_bound")
    assert iw.dtype == torch.long and iw.shape == (16,)
    assert (iw == labels).double().mean().item() == pytest.approx(want["iw_bound"]["accuracy"])
    assert digits.log_prior().shape == (10,)


def test_points_run(toy):
    points = toy.sample(32)
    assert points.shape == (32, 2)
    assert torch.equal(toy.to_data(points), points)  # points are shown as they are
    assert toy.nll(points).shape == (32,)


def _one_line(call, exc=ntm.ArgumentError) -> str:
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(("call", "words"), [
    (lambda m: m.sample(prompts=["two red circles"]), ["prompts:", "class labels"]),
    (lambda m: m.sample(labels=[1, 10]), ["labels:", "10", "out of range", "0..9"]),
    (lambda m: m.sample(labels=-1), ["labels:", "-1", "out of range"]),
    (lambda m: m.sample(labels=[0.5]), ["labels:", "integer"]),
    (lambda m: m.sample(7, labels=[1, 2]), ["n=7", "multiple"]),
    (lambda m: m.sample(0), ["n:"]),
    (lambda m: m.sample(steps=0), ["steps:"]),
    (lambda m: m.sample(guidance=-1.0), ["guidance=-1.0"]),
    (lambda m: m.sample(temperature=0.0), ["temperature=0.0"]),
    (lambda m: m.sample(denoiser="bogus"), ["denoiser='bogus'"]),
    (lambda m: m.sample(space="pixels"), ["space='pixels'"]),
    (lambda m: m.nll(torch.rand(2, 3, 8, 8)), ["x:", "(N, 1, 8, 8)", "(2, 3, 8, 8)"]),
    (lambda m: m.nll(torch.rand(2, 64)), ["x:", "(N, 1, 8, 8)"]),
    (lambda m: m.nll(torch.rand(2, 1, 8, 8) * 2 - 1), ["x:", "[0, 1]", "space='data'"]),
    (lambda m: m.nll(torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)), ["x:", "uint8", "255"]),
    (lambda m: m.nll(torch.full((2, 1, 8, 8), float("nan"))), ["x:", "non-finite"]),
    (lambda m: m.nll(torch.rand(4, 1, 8, 8), labels=[1, 2]), ["labels:", "2 given for 4"]),
    (lambda m: m.nll(torch.rand(4, 1, 8, 8), kind="exact"), ["kind='exact'"]),
    (lambda m: m.classify(torch.rand(2, 1, 8, 8), score="bpd"), ["score='bpd'"]),
    (lambda m: m.classify(torch.rand(2, 1, 8, 8), trajectories=0), ["trajectories:"]),
])
def test_bad_arguments_are_one_line_naming_the_argument(digits, call, words):
    message = _one_line(lambda: call(digits))
    assert all(w in message for w in words), message


def test_unconditional_runs_refuse_conditions_and_classification(toy):
    assert "classify" in _one_line(lambda: toy.classify(torch.zeros(3, 2)))
    assert "unconditional" in _one_line(lambda: toy.sample(labels=[0]))
    assert "prompts:" in _one_line(lambda: toy.sample(prompts="a star"))
    assert "guidance" in _one_line(lambda: toy.sample(guidance=1.0))


def test_load_errors_are_one_line(tmp_path, digits_run):
    assert "does not exist" in _one_line(lambda: ntm.load(tmp_path / "nope"), FileNotFoundError)
    assert "no config.json" in _one_line(lambda: ntm.load(tmp_path))
    assert "device='gpu'" in _one_line(lambda: ntm.load(digits_run, device="gpu"))


def test_a_checkpoint_inside_a_run_loads_and_load_keeps_the_global_rng(digits_run, digits):
    state = torch.random.get_rng_state()
    checkpoint = next((digits_run / "checkpoints").iterdir())
    m = ntm.load(checkpoint, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(m.sample(4), digits.sample(4))
    raw = ntm.load(digits_run, ema=False, device="cpu")
    assert raw.weights == "raw" and not torch.equal(raw.sample(4), digits.sample(4))
