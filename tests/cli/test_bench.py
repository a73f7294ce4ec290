"""``ntm bench toy`` end to end at a tiny budget."""

import dataclasses
import json

import numpy as np
import pytest

from ntm.experiments.bench import Suite, digits_suite, run_suite, toy_suite
from ntm.experiments.cli import main
from ntm.viz import load_png


def _quality(row):
    """A row's metrics but the measured memory (which varies from call to call)."""
    return {k: v for k, v in row["metrics"].items() if k != "peak_mem_mb"}


@pytest.mark.slow
def test_bench_toy_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "toy", "--out", str(out), "--tiny", "--train-steps", "3", "--finetune-steps", "4",
            "--num-samples", "64", "--device", "cpu"]
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    suite = toy_suite(train_steps=3, finetune_steps=4, tiny=True)
    curves = sum(len(m.curve.steps(m.experiment.train.steps)) for m in suite.models if m.curve is not None)
    assert len(rows) == sum(len(m.points) for m in suite.models) + curves
    for row in rows:
        assert set(row) >= {"suite", "dataset", "model", "K", "nfe", "guidance", "denoiser", "seed", "train_steps",
                            "metrics", "wall_ms_per_sample"}
        assert row["suite"] == "toy" and row["wall_ms_per_sample"] > 0 and row["guidance"] == 0
        assert np.isfinite(row["metrics"]["energy_distance"]) and "oracle_log_density" in row["metrics"]
        step = next((f"_step{row[k]}" for k in ("finetune_steps", "teacher_steps") if k in row), "")
        samples = np.load(out / f"samples_{row['model']}_K{row['K']}{step}.npy")
        assert samples.shape == (64, 2)
    models = {r["model"] for r in rows}
    assert {"ntm", "ntm-multi-k", "gaussian", "gaussian-posterior-sigma", "flow-matching-euler", "flow-matching-heun",
            "ar-flow", "teacher-posterior", "finetuned", "finetuned-multi-k", "finetuned-curve",
            "flow-matching-curve"} == models
    ntm_rows = [r for r in rows if r["model"] == "ntm"]
    assert all("oracle_gap_bpd" in r["metrics"] for r in ntm_rows)
    by = {(r["model"], r["K"], r.get("finetune_steps", r.get("teacher_steps"))): r for r in rows}
    # the new NTM-style rows: trajectory NLL and oracle gap, finite; budgets as asked
    for key in [("teacher-posterior", 2, None), ("teacher-posterior", 4, None), ("finetuned", 4, None),
                ("finetuned-multi-k", 2, None), ("finetuned-multi-k", 4, None), ("finetuned-multi-k", 8, None)]:
        m = by[key]["metrics"]
        assert np.isfinite([m["nll_traj_bpd"], m["oracle_gap_bpd"], m["energy_distance"]]).all(), key
    assert by[("finetuned", 4, None)]["train_steps"] == 4 and by[("teacher-posterior", 4, None)]["train_steps"] == 3
    # finetune curve: steps 0, 25, 50, 100 % of 4; at step 0 the model IS the teacher's posterior sampler
    assert sorted(r["finetune_steps"] for r in rows if r["model"] == "finetuned-curve") == [0, 1, 2, 4]
    start, teacher = by[("finetuned-curve", 4, 0)]["metrics"], by[("teacher-posterior", 4, None)]["metrics"]
    for key in ("nll_traj_bpd", "bound_bpd", "oracle_gap_bpd", "energy_distance"):
        assert abs(start[key] - teacher[key]) <= 1e-6 * max(1.0, abs(teacher[key])), key
    end = by[("finetuned-curve", 4, 4)]["metrics"]
    assert end["nll_traj_bpd"] == by[("finetuned", 4, None)]["metrics"]["nll_traj_bpd"]
    assert sorted(r["teacher_steps"] for r in rows if r["model"] == "flow-matching-curve") == [1, 2, 3]
    assert {r["K"] for r in rows if r["model"] == "flow-matching-curve"} == {64}
    # the finetuned runs start from the teacher's final checkpoint
    config = json.loads((out / "runs" / "toy-finetuned-K4" / "config.json").read_text())
    assert config["init"]["path"] == str(out / "runs" / "toy-flow-matching" / "checkpoints" / "step_00000003")
    mixture = json.loads((out / "mixture.json").read_text())
    assert len(mixture["weights"]) == 8 and "4" in mixture["t_schedule"]
    for name in ("results.md", "quality_vs_nfe.png", "quality_vs_wall.png", "energy_distance_vs_finetune_steps.png",
                 "energy_distance_vs_teacher_steps.png"):
        assert (out / name).is_file()
    assert "finetuned-curve (finetune_steps)" in (out / "results.md").read_text()
    assert any((out / "figures").glob("samples_ntm_K4.png"))
    # a second run reuses the finished models instead of retraining them
    capsys.readouterr()
    rc = main(argv)
    assert rc == 0
    assert "resumed" not in capsys.readouterr().out
    assert [_quality(r) for r in json.loads((out / "results.json").read_text())] == [_quality(r) for r in rows]


def test_digits_learned_denoiser_and_guided_rows(tmp_path, capsys):
    """The digits-only paths on a few tiny models: in-process distillation, learned-denoiser rows with their PSNR
    against score denoising, guided rows (no likelihood), the finetune curve (no image metrics: no classifier)."""
    full = digits_suite(train_steps=2, finetune_steps=2, distill_steps=2, tiny=True)
    keep = {"ntm", "flow-matching", "teacher-posterior", "finetuned"}
    models = []
    for m in full.models:
        if m.name in keep:
            points = m.points
            if m.name == "flow-matching":  # Euler@64 alone (also the curve's point)
                points = tuple(p for p in m.points if (p.label, p.steps) == ("euler", 64))
            models.append(dataclasses.replace(m, points=points))
    suite = Suite("digits-mini", tuple(models), num_samples=20, comparison=full.comparison)
    rows = run_suite(suite, tmp_path, device="cpu", progress=False)
    names = [r["model"] for r in rows]
    assert {"ntm", "ntm-w1.5", "ntm-learned", "ntm-learned-w1.5", "teacher-posterior", "teacher-posterior-w1.5",
            "finetuned", "finetuned-w1.5", "finetuned-learned", "finetuned-learned-w1.5"} <= set(names)
    for r in rows:
        assert r["wall_ms_per_sample"] > 0
        guided = r["model"].endswith("-w1.5")
        assert r["guidance"] == (1.5 if guided else 0.0)
        if r["model"].startswith(("ntm", "teacher-posterior", "finetuned")) and r["model"] != "finetuned-curve":
            assert ("nll_traj_bpd" in r["metrics"]) != guided, r["model"]
        learned = "-learned" in r["model"]
        assert (r["denoiser"] == "learned") == learned and ("psnr_learned_vs_score_db" in r["metrics"]) == learned
        if learned:
            assert np.isfinite(r["metrics"]["psnr_learned_vs_score_db"]) and r["distill_steps"] == 2
    for run in ("digits-ntm-K4", "digits-finetuned-K4"):
        assert (tmp_path / "runs" / run / "denoiser" / "final.json").is_file()
    # teacher@4 | finetuned@4 | finetuned@4 + learned | flow matching@64, side by side
    panels = [load_png(tmp_path / "figures" / f"samples_{key}.png") for key, _ in full.comparison]
    compare = load_png(tmp_path / "figures" / "compare.png")
    assert len(panels) == 4 and compare.shape[0] == 3
    assert compare.shape[2] > sum(p.shape[2] for p in panels) and compare.shape[1] > max(p.shape[1] for p in panels)
    curve = {r["finetune_steps"]: r for r in rows if r["model"] == "finetuned-curve"}
    assert sorted(curve) == [0, 1, 2] and all(r["denoiser"] == "none" for r in curve.values())
    teacher = next(r for r in rows if r["model"] == "teacher-posterior")
    assert abs(curve[0]["metrics"]["nll_traj_bpd"] - teacher["metrics"]["nll_traj_bpd"]) <= 1e-6 * max(
        1.0, abs(teacher["metrics"]["nll_traj_bpd"]))
    # a rerun reuses the runs and the distilled denoisers
    capsys.readouterr()
    again = run_suite(suite, tmp_path, device="cpu", progress=False)
    assert "distilled" not in capsys.readouterr().out
    assert [_quality(r) for r in again] == [_quality(r) for r in rows]


def test_paper_suite_is_defined_and_refuses_to_run_without_local_inception_weights(tmp_path, capsys):
    from ntm.experiments.bench import paper_suite

    suite = paper_suite()
    names = {m.name for m in suite.models}
    assert {"ntm", "gaussian", "flow-matching", "ar-flow", "ntm-multi-k"} <= names
    ntm = next(m for m in suite.models if m.name == "ntm").experiment
    assert ntm.model.predictor.depth == 24 and ntm.model.transporter.layers_per_block == 4
    assert ntm.model.process.steps == (4,)
    rc = main(["bench", "paper", "--out", str(tmp_path), "--inception-weights", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --inception-weights" in err and "missing.pth" in err
    rc = main(["bench", "paper", "--out", str(tmp_path), "--finetune-steps", "3"])
    assert rc == 2 and "no finetuned or distilled models" in capsys.readouterr().err


def test_suite_variants_are_typed_configs():
    from ntm.experiments.finetune import TEACHER_MAPPING
    from ntm.denoisers import (
        LearnedDenoiserConfig,
        NoDenoiserConfig,
        ScoreDenoiserConfig,
    )
    from ntm.losses import FinetuneConfig, FlowMatchingConfig
    from ntm.predictors import PosteriorPredictorConfig
    from ntm.samplers import AncestralConfig, EulerConfig, HeunConfig
    from ntm.transporters import IdentityConfig, TarFlowConfig

    suite = digits_suite(train_steps=10, tiny=True)
    by_name = {m.name: m for m in suite.models}
    assert len(by_name) == len(suite.models)
    fm = by_name["flow-matching"]
    assert isinstance(fm.experiment.model.transporter, IdentityConfig)
    assert isinstance(fm.experiment.model.predictor, PosteriorPredictorConfig)
    assert fm.experiment.model.predictor.xhat.depth == 1 and fm.experiment.model.predictor.xhat.width == 16
    assert isinstance(fm.experiment.loss, FlowMatchingConfig) and isinstance(fm.experiment.denoiser, NoDenoiserConfig)
    assert fm.experiment.sampler == EulerConfig(num_steps=64)
    assert [type(p.sampler) for p in fm.points] == [EulerConfig] * 3 + [HeunConfig]
    assert [(p.steps, p.nfe, p.label) for p in fm.points] == [(4, 4, "euler"), (16, 16, "euler"), (64, 64, "euler"),
                                                              (4, 7, "heun")]
    # the teacher: four times the budget by default, keeping checkpoints at 25/50/100 % for its convergence curve
    teacher = fm.experiment
    assert teacher.train.steps == 40 and teacher.train.checkpoint_every == 10 and teacher.train.keep_checkpoints == 4
    assert fm.curve.name == "flow-matching-curve" and fm.curve.steps(40) == (10, 20, 40)
    assert fm.curve.point.sampler == EulerConfig(num_steps=64)
    ar = by_name["ar-flow"].experiment
    assert isinstance(ar.model.transporter, TarFlowConfig) and ar.model.transporter.num_blocks == 4
    assert ar.model.transporter.layers_per_block == 1 and ar.model.transporter.width == 16
    assert ar.model.predictor.depth == 1 and isinstance(ar.denoiser, ScoreDenoiserConfig)
    sigma = by_name["gaussian-posterior-sigma"].experiment.model.predictor
    assert sigma.head.sigma == "posterior" and sigma.width == 16
    # teacher posterior: the flow-matching run itself, sampled ancestrally at K = 4, no denoiser, unguided and w = 1.5
    posterior = by_name["teacher-posterior"]
    assert posterior.experiment == teacher and posterior.likelihood
    assert [(p.sampler, p.guidance, p.label, p.denoiser) for p in posterior.points] == [
        (AncestralConfig(num_steps=4), 0.0, "", None), (AncestralConfig(num_steps=4), 1.5, "w1.5", None)]
    # finetuned: the finetune preset on the teacher, initialised from it, keeping its curve's checkpoints
    ft = by_name["finetuned"]
    exp = ft.experiment
    assert ft.init_from == teacher.name and exp.init.mapping == TEACHER_MAPPING
    assert isinstance(exp.loss, FinetuneConfig) and isinstance(exp.model.transporter, TarFlowConfig)
    assert exp.model.transporter.width == 16 and exp.model.process.steps == (4,)
    predictor = exp.model.predictor
    assert predictor.learned_scale and predictor.reference and predictor.xhat == teacher.model.predictor.xhat
    assert exp.data == teacher.data and exp.conditioner == teacher.conditioner and exp.patch_size == teacher.patch_size
    assert exp.train.steps == 5 and exp.train.checkpoint_every == 1 and exp.train.keep_checkpoints == 5
    assert ft.curve.steps(5) == (0, 1, 2, 5) and isinstance(ft.curve.point.denoiser, NoDenoiserConfig)
    assert ft.distill_steps == 5
    assert [(p.label, p.guidance, type(p.denoiser)) for p in ft.points] == [
        ("", 0.0, type(None)), ("w1.5", 1.5, type(None)), ("learned", 0.0, LearnedDenoiserConfig),
        ("learned-w1.5", 1.5, LearnedDenoiserConfig)]
    assert ft.points[2].denoiser.width == 16 and ft.points[2].denoiser.depth == 1
    multi = by_name["finetuned-multi-k"]
    assert multi.init_from == teacher.name and multi.experiment.model.process.steps == (2, 4, 8)
    assert [(p.steps, p.guidance) for p in multi.points] == [(2, 0.0), (2, 1.5), (4, 0.0), (4, 1.5), (8, 0.0), (8, 1.5)]
    ntm = by_name["ntm"]
    assert [p.label for p in ntm.points] == ["", "w1.5", "learned", "learned-w1.5"] and ntm.distill_steps == 5
    # models come in dependency order
    order = [m.experiment.name for m in suite.models]
    assert order.index(teacher.name) < order.index(exp.name)
    for m in suite.models:
        steps = {"flow-matching": 40, "teacher-posterior": 40, "finetuned": 5, "finetuned-multi-k": 5}.get(m.name, 10)
        assert m.experiment.train.steps == steps
        assert m.experiment.train.warmup_steps in (2, 8, 0.05)  # a fifth of the budget, or the preset fraction
        assert m.experiment.eval.num_examples == 64
        assert all(p.sampler is None for p in m.points) or m.name in ("flow-matching", "teacher-posterior")


def test_suite_parameters_and_dependency_checks(tmp_path):
    suite = digits_suite(train_steps=8, finetune_steps=3, distill_steps=7, teacher_steps=9, tiny=True)
    by_name = {m.name: m for m in suite.models}
    assert by_name["flow-matching"].experiment.train.steps == 9
    assert by_name["finetuned"].experiment.train.steps == 3 and by_name["finetuned"].distill_steps == 7
    toy = {m.name: m for m in toy_suite(train_steps=6, tiny=True).models}
    assert toy["finetuned"].experiment.train.steps == 3  # half the budget by default
    assert toy["flow-matching"].experiment.train.steps == 6 and toy["finetuned"].distill_steps is None
    # a model may only start from an earlier one
    ft = by_name["finetuned"]
    broken = Suite("broken", (ft, by_name["flow-matching"]), num_samples=4)
    with pytest.raises(ValueError, match="not an earlier model"):
        run_suite(broken, tmp_path, device="cpu", progress=False)
