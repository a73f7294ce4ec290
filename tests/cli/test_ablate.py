"""``ntm ablate``: a grid over registered variants and step counts, one budget, one table."""

import json

import pytest

from ntm.experiments.bench.ablate import cell, parse_slots
from ntm.experiments.cli import main
from ntm.experiments.presets import PRESETS


def test_ablate_toy_grid_runs_every_cell_with_ratios(tmp_path, capsys):
    out = tmp_path / "ab"
    argv = ["ablate", "toy", "--slot", "transporter=identity,tarflow", "--steps", "1", "2", "--train-steps", "3",
            "--num-samples", "64", "--tiny", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["K"]) for r in rows] == [("transporter=identity", 1), ("transporter=identity", 2),
                                                    ("transporter=tarflow", 1), ("transporter=tarflow", 2)]
    for r in rows:
        m = r["metrics"]
        assert r["train_steps"] == 3 and {"oracle_gap_bpd", "energy_distance", "gap_ratio"} <= set(m)
        identity = next(x for x in rows if x["K"] == r["K"] and x["model"] == "transporter=identity")
        assert m["gap_ratio"] == pytest.approx(m["oracle_gap_bpd"] / identity["metrics"]["oracle_gap_bpd"])
    assert "gap_ratio" in (out / "results.md").read_text()
    assert (out / "figures" / "compare.png").is_file()  # both cells side by side at K = 2


def test_cells_keep_the_presets_variant_and_default_the_others():
    slots = parse_slots(("transporter=tarflow,identity", "predictor=transformer,trajectory"))
    base = PRESETS["toy-ntm"]
    same = cell(base, [(s, p, n[0]) for s, p, n in slots])
    assert same.model.transporter == base.model.transporter and same.model.predictor == base.model.predictor
    other = cell(base, [(s, p, n[1]) for s, p, n in slots])
    assert type(other.model.transporter).__name__ == "IdentityConfig"
    assert other.model.predictor == type(other.model.predictor)()  # the variant's defaults


@pytest.mark.parametrize("args, text", [
    (["toy", "--slot", "transporter=tarflw"], "unknown transporter 'tarflw'"),
    (["toy", "--slot", "transportr=tarflow"], "unknown slot 'transportr'"),
    (["toy", "--slot", "transporter"], "SLOT=NAME"),
    (["toys", "--slot", "transporter=tarflow"], "unknown ablation suite 'toys'"),
    (["toy", "--steps", "0"], "--steps"),
    (["toy", "--slot", "loss=flow-matching"], "would ignore transporter 'tarflow'"),  # an incompatible cell
])
def test_bad_ablation_arguments_are_one_line(args, text, tmp_path, capsys):
    assert main(["ablate", *args, "--out", str(tmp_path / "ab")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0], err
    assert not (tmp_path / "ab").exists()
