"""``ntm bench shapes`` at a tiny budget: every model family trained and scored on captions, the prompt figure."""

import json

import numpy as np
import pytest

from ntm.experiments.bench import SHAPES_PROMPTS, generative_params, shapes_suite
from ntm.experiments.cli import main
from ntm.data.shapes import parse_caption
from ntm.viz import load_png


@pytest.fixture
def cheap_scoring(cheap_shapes_scoring):
    """The judge stand-in and a small domain classifier at 16x16 (tests/cli/conftest.py); the recorded calls."""
    return cheap_shapes_scoring(16)


@pytest.mark.slow
def test_bench_shapes_runs_end_to_end(tmp_path, capsys, cheap_scoring):
    out = tmp_path / "bench"
    argv = ["bench", "shapes", "--out", str(out), "--tiny", "--train-steps", "2", "--num-samples", "8",
            "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in rows]
    assert names == ["ntm", "ntm-w1.5", "gaussian", "gaussian-w1.5"] + ["flow-matching-euler",
                                                                      "flow-matching-euler-w1.5"] * 3 + [
        "ar-flow", "ar-flow-w1.5"]
    assert [r["K"] for r in rows if r["model"].startswith("flow-matching")] == [4, 4, 16, 16, 64, 64]
    assert cheap_scoring == [(8, (3, 16, 16))] * 2 * len(rows)  # seen and unseen captions, per row
    for r in rows:
        m = r["metrics"]
        assert r["suite"] == "shapes" and r["train_steps"] == 2 and r["wall_ms_per_sample"] > 0
        assert r["guidance"] == (1.5 if r["model"].endswith("-w1.5") else 0.0)
        for split in ("seen", "unseen"):
            assert 0 <= m[f"shapes_{split}_overall"] <= 1
            assert {k for k in m if k.startswith(f"shapes_{split}_")} >= {f"shapes_{split}_overall"}
        assert np.isfinite(m["fid"])
        assert m["unseen_vs_seen"] == m["shapes_unseen_overall"] / m["shapes_seen_overall"]
        likelihood = not r["model"].startswith("flow-matching") and r["guidance"] == 0
        assert ("nll_traj_bpd" in m) == likelihood, r["model"]
        if likelihood:
            assert np.isfinite(m["nll_traj_bpd"])
        assert (out / "figures" / f"samples_{r['model']}_K{r['K']}.png").is_file()
    assert next(r for r in rows if r["model"] == "ar-flow")["nfe"] == 16 * 4  # tokens x blocks: sequential
    # the same prompts across every row: one caption row per prompt, 2 samples per model row side by side
    figure = load_png(out / "figures" / "prompts.png")
    assert figure.shape[0] == 3 and figure.shape[1] >= len(SHAPES_PROMPTS) * 4 * 16
    assert figure.shape[2] >= len(rows) * 2 * 4 * 16
    report = (out / "results.md").read_text()
    assert "shapes_seen_overall" in report and "| unseen/seen |" in report
    params = {r["model"].removesuffix("-w1.5"): r["params"] for r in rows}
    assert len(set(params.values())) > 1 and all(n > 0 for n in params.values())  # sized per family
    # a second run reuses the trained models
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed" not in capsys.readouterr().out


@pytest.mark.slow
def test_shapes_suite_sizes_every_model_to_the_ntm():
    """Full size (no training): the baselines' parameter counts, text encoder excluded, within 10 % of the NTM's;
    one text encoder, budget and seed for all; the prompts parse and cover the six categories."""
    suite = shapes_suite(train_steps=7, seed=3)
    by = {m.name: m.experiment for m in suite.models}
    assert list(by) == ["ntm", "gaussian", "flow-matching", "ar-flow"]
    data = by["ntm"].data.build()
    target = generative_params(by["ntm"], data)
    for name, exp in by.items():
        assert abs(generative_params(exp, data) - target) <= 0.1 * target, name
        assert exp.conditioner == by["ntm"].conditioner and exp.data == by["ntm"].data
        assert exp.train.steps == 7 and exp.train.seed == 3 and exp.train.batch_size == by["ntm"].train.batch_size
    assert by["ntm"].model.process.steps == by["gaussian"].model.process.steps == (4,)
    assert by["ntm"].data.image_size == 16 and shapes_suite(image_size=32).models[0].experiment.data.image_size == 32
    assert type(by["gaussian"].model.transporter).__name__ == "IdentityConfig"
    ar = by["ar-flow"].model
    assert ar.process.steps == (1,) and ar.transporter.num_blocks == 4
    assert ar.transporter.deep_layers > ar.transporter.layers_per_block  # deep-shallow
    assert {parse_caption(p)["category"] for p in SHAPES_PROMPTS} == {
        "single_object", "colors", "two_object", "counting", "position", "color_attr"}
    with pytest.raises(Exception, match="one budget"):
        shapes_suite(finetune_steps=3)
