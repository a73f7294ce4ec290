"""Bayes-rule classification and out-of-distribution scores from the exact likelihood (eval/likelihood.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ntm.eval.likelihood import (
    auroc, class_log_likelihoods, classify, expected_calibration_error, ood_scores, ood_sets,
)
from ntm.experiments.build import build_model, data_for, layout_for
from ntm.experiments.cli import main
from ntm.experiments.presets import PRESETS

TINY = ["--train.steps", "3", "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "32",
        "--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "32", "--predictor.depth", "2"]


def test_calibration_error_and_auroc_on_known_cases():
    labels = torch.tensor([0, 1, 0, 1])
    sure_and_right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(sure_and_right, labels) == pytest.approx(0.0)
    sure_and_half_wrong = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(sure_and_half_wrong, labels) == pytest.approx(0.5)  # confidence 1, accuracy 0.5
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) == 0.5
    m = classify(torch.log(sure_and_half_wrong.clamp_min(1e-9)).double(), labels, torch.log(torch.full((2,), 0.5)))
    assert m["accuracy"] == 0.5 and m["ece"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_digits():
    exp = PRESETS["digits-ntm"].replace(model=PRESETS["digits-ntm"].model.replace(
        transporter=PRESETS["digits-ntm"].model.transporter.replace(width=16, num_heads=2),
        predictor=PRESETS["digits-ntm"].model.predictor.replace(width=32, depth=2)))
    data = data_for(exp)
    torch.manual_seed(0)
    model = build_model(exp, data).double().eval()
    with torch.no_grad():  # off the zero-initialised start, where every class scores alike
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.cat([b.x for b in data.eval_batches(12, max_examples=12)]).double()
    return exp, data, model, x


def test_every_condition_scores_the_same_trajectories(tiny_digits):
    exp, data, model, x = tiny_digits
    layout = layout_for(exp, data)
    both = class_log_likelihoods(model, [x[:7], x[7:]], layout, 4, trajectories=3, seed=5)
    null = class_log_likelihoods(model, [x[:7], x[7:]], layout, 4, trajectories=3, seed=5, with_classes=False)
    assert both["traj"].shape == (12, 11) and null["traj"].shape == (12, 1)
    # the null column is the same number whether or not the classes were scored beside it: same trajectories
    assert torch.allclose(both["traj"][:, -1], null["traj"][:, 0], rtol=0, atol=1e-9)
    # one trajectory: the trajectory log-likelihood and the x_{t_0} bound differ by a class-independent term
    one = class_log_likelihoods(model, [x], layout, 4, trajectories=1, seed=5)
    shift = one["traj"] - one["iw_bound"]
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-8)
    assert not torch.allclose(one["traj"][:, 0], one["traj"][:, 1])  # the classes do score differently


def test_iw_bound_is_above_the_mean_bound(tiny_digits):
    exp, data, model, x = tiny_digits
    layout = layout_for(exp, data)
    # one batch and seed 0: trajectory s of the 3 is generated exactly as class_log_likelihoods does
    scored = class_log_likelihoods(model, [x], layout, 4, trajectories=3, seed=0)
    from ntm.losses.nll import x0_bound_nats

    bounds = []
    for s in range(3):
        gen = torch.Generator().manual_seed(s * 10_007)
        times = model.process.times(4, dtype=x.dtype)
        tokens = layout.to_tokens(x)
        trajectory = model.process.sample_trajectory(tokens, times, gen)
        bounds.append(-x0_bound_nats(model.step_nlls(trajectory, times, model.null_condition(12)), trajectory, times))
    mean = torch.stack(bounds).mean(0)
    assert torch.all(scored["iw_bound"][:, -1] >= mean - 1e-9)
    assert torch.any(scored["iw_bound"][:, -1] > mean + 1e-6)


def test_ood_sets_and_scores(tiny_digits):
    exp, data, model, x = tiny_digits
    sets = ood_sets(x.float(), seed=0, levels=17)
    assert set(sets) == {"noise", "flipped", "inverted", "shapes"}
    for name, images in sets.items():
        assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1, name
    grid = (sets["noise"] + 1) / 2 * 16
    assert torch.allclose(grid, grid.round(), atol=1e-5)  # on the data's 17 grey levels
    assert torch.equal(sets["flipped"], x.float().flip(-2)) and torch.equal(sets["inverted"], -x.float())
    loglik = torch.tensor([[-10.0, -12.0, -11.0], [-20.0, -30.0, -25.0]], dtype=torch.float64)
    scores = ood_scores(loglik, dims=4, train_nll_bpd=5.0)
    assert scores["likelihood-ratio"].tolist() == [-1.0, -5.0]  # null minus the best class
    assert torch.allclose(scores["typicality"], (scores["nll"] - 5.0).abs())
    # class-marginal: -log sum_c p(c) p(x | c) in bits per dim (uniform prior by default, a given prior weighs it)
    uniform = -torch.logsumexp(loglik[:, :2] - math.log(2), dim=1) / (4 * math.log(2))
    assert torch.allclose(scores["class-marginal"], uniform)
    skewed = ood_scores(loglik, dims=4, train_nll_bpd=5.0, log_prior=torch.log(torch.tensor([1.0, 1e-12])))
    assert torch.allclose(skewed["class-marginal"], -loglik[:, 0] / (4 * math.log(2)), atol=1e-9)


def test_eval_classify_and_ood_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits-ntm", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--classify", "--ood", "--trajectories", "1", "--num-examples", "20"]) == 0
    out = capsys.readouterr().out
    assert "Bayes-rule classification" in out and "out-of-distribution AUROC" in out
    classified = json.loads((run / "classify.json").read_text())
    for score in ("traj", "iw_bound"):
        assert 0 <= classified[score]["accuracy"] <= 1 and classified[score]["examples"] == 20
    ood = json.loads((run / "ood.json").read_text())
    assert set(ood["auroc"]) == {"noise", "flipped", "inverted", "shapes"}
    assert all(set(v) == {"nll", "typicality", "likelihood-ratio", "class-marginal"} for v in ood["auroc"].values())
    assert all(0 <= a <= 1 for v in ood["auroc"].values() for a in v.values())


def test_classify_refuses_an_unconditional_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits-ntm", "conditioner:none", "--run-dir", str(run), *TINY]) == 2  # guided sampler
    assert "--sampler.guidance 0" in capsys.readouterr().err and not run.exists()
    assert main(["train", "digits-ntm", "conditioner:none", "--sampler.guidance", "0", "--run-dir", str(run),
                 *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--classify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classify needs a class-conditional run" in err[0]
