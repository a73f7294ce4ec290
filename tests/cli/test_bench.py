"""``ntm bench toy`` end to end at a tiny budget."""

import json

import numpy as np

from experiments.bench import toy_suite
from experiments.cli import main


def test_bench_toy_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "toy", "--out", str(out), "--tiny", "--train-steps", "2", "--num-samples", "64", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    suite = toy_suite(train_steps=2, tiny=True)
    assert len(rows) == sum(len(m.points) for m in suite.models)
    for row in rows:
        assert set(row) >= {"suite", "dataset", "model", "K", "nfe", "seed", "train_steps", "metrics", "wall_ms_per_sample"}
        assert row["suite"] == "toy" and row["train_steps"] == 2 and row["wall_ms_per_sample"] > 0
        assert np.isfinite(row["metrics"]["energy_distance"]) and "oracle_log_density" in row["metrics"]
        samples = np.load(out / f"samples_{row['model']}_K{row['K']}.npy")
        assert samples.shape == (64, 2)
    models = {r["model"] for r in rows}
    assert {"ntm", "ntm-multi-k", "gaussian", "gaussian-posterior-sigma", "flow-matching-euler", "flow-matching-heun",
            "ar-flow"} <= models
    ntm_rows = [r for r in rows if r["model"] == "ntm"]
    assert all("oracle_gap_bpd" in r["metrics"] for r in ntm_rows)
    mixture = json.loads((out / "mixture.json").read_text())
    assert len(mixture["weights"]) == 8 and "4" in mixture["t_schedule"]
    for name in ("results.md", "quality_vs_nfe.png", "quality_vs_wall.png"):
        assert (out / name).is_file()
    assert any((out / "figures").glob("samples_ntm_K4.png"))
    # a second run reuses the finished models instead of retraining them
    rc = main(["bench", "toy", "--out", str(out), "--tiny", "--train-steps", "2", "--num-samples", "64", "--device", "cpu"])
    assert rc == 0
    assert "resumed" not in capsys.readouterr().out


def test_paper_suite_is_defined_and_refuses_to_run_without_local_inception_weights(tmp_path, capsys):
    from experiments.bench import paper_suite

    suite = paper_suite()
    names = {m.name for m in suite.models}
    assert {"ntm", "gaussian", "flow-matching", "ar-flow", "ntm-multi-k"} <= names
    ntm = next(m for m in suite.models if m.name == "ntm").experiment
    assert ntm.model.predictor.depth == 24 and ntm.model.transporter.layers_per_block == 4
    assert ntm.model.process.steps == (4,)
    rc = main(["bench", "paper", "--out", str(tmp_path), "--inception-weights", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --inception-weights" in err and "missing.pth" in err


def test_suite_variants_are_typed_configs():
    from experiments.bench import digits_suite
    from ntm.denoisers import NoDenoiserConfig, ScoreDenoiserConfig
    from ntm.losses import FlowMatchingConfig
    from ntm.predictors import PosteriorPredictorConfig
    from ntm.samplers import EulerConfig, HeunConfig
    from ntm.transporters import IdentityConfig, TarFlowConfig

    suite = digits_suite(train_steps=10, tiny=True)
    by_name = {m.experiment.name: m for m in suite.models}
    fm = by_name["digits-flow-matching"]
    assert isinstance(fm.experiment.model.transporter, IdentityConfig)
    assert isinstance(fm.experiment.model.predictor, PosteriorPredictorConfig)
    assert fm.experiment.model.predictor.xhat.depth == 1 and fm.experiment.model.predictor.xhat.width == 16
    assert isinstance(fm.experiment.loss, FlowMatchingConfig) and isinstance(fm.experiment.denoiser, NoDenoiserConfig)
    assert fm.experiment.sampler == EulerConfig(num_steps=64)
    assert [type(p.sampler) for p in fm.points] == [EulerConfig] * 3 + [HeunConfig]
    assert [(p.steps, p.nfe, p.label) for p in fm.points] == [(4, 4, "euler"), (16, 16, "euler"), (64, 64, "euler"),
                                                              (4, 7, "heun")]
    ar = by_name["digits-ar-flow"].experiment
    assert isinstance(ar.model.transporter, TarFlowConfig) and ar.model.transporter.num_blocks == 4
    assert ar.model.transporter.layers_per_block == 1 and ar.model.transporter.width == 16
    assert ar.model.predictor.depth == 1 and isinstance(ar.denoiser, ScoreDenoiserConfig)
    sigma = by_name["digits-gaussian-posterior-sigma-K4"].experiment.model.predictor
    assert sigma.sigma == "posterior" and sigma.width == 16
    for m in suite.models:
        assert m.experiment.train.steps == 10 and m.experiment.train.warmup_steps == 2
        assert m.experiment.eval.num_examples == 64
        assert all(p.sampler is None for p in m.points) or m.name == "flow-matching"
