"""``ntm bench latency``: every model at both geometries, a size-matched deep-shallow AR flow, one table."""

import json

import pytest
import torch

from ntm.experiments.cli import main
from ntm.experiments.bench.latency import (
    GEOMETRIES,
    Geometry,
    candidates,
    count_params,
    deep_shallow_ar,
)
from ntm.spec import ModelDims
from ntm.transporters import TarFlow


def test_deep_shallow_ar_matches_the_target_parameter_count():
    dims = ModelDims(num_tokens=16, token_dim=4, num_classes=10)
    small = count_params(deep_shallow_ar(0, dims, width=32, num_heads=2).build(dims))
    cfg = deep_shallow_ar(400_000, dims, width=32, num_heads=2)
    assert cfg.deep_layers > cfg.layers_per_block and cfg.num_blocks == 4
    params = count_params(cfg.build(dims))
    per_layer = count_params(cfg.replace(deep_layers=cfg.deep_layers + 1).build(dims)) - params
    assert abs(params - 400_000) <= per_layer / 2 + 1  # the nearest whole number of deep layers
    assert small < params


def test_candidates_sample_the_right_shapes_and_the_fast_path_never_inverts(monkeypatch):
    geometry = Geometry("tiny", 8, 1, 2)
    calls = []
    original = TarFlow.inverse
    monkeypatch.setattr(TarFlow, "inverse", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    models = {c.name: c for c in candidates(geometry, tiny=True)}
    assert set(models) == {"ntm-K4-learned", "finetuned-K4-learned", "ntm-K4-score", "flow-matching-euler16",
                           "flow-matching-euler64", "ar-flow-deep-shallow"}
    dims = geometry.dims
    for name, cand in models.items():
        calls.clear()
        x = cand.sample(3)
        assert x.shape == (3, dims.num_tokens, dims.token_dim) and torch.isfinite(x).all(), name
        assert bool(calls) == (name in ("ntm-K4-score", "ar-flow-deep-shallow")), name
    ntm, ar = models["ntm-K4-learned"], models["ar-flow-deep-shallow"]
    assert ar.sequential_steps == 4 * dims.num_tokens and ntm.sequential_steps == 5
    assert abs(ar.params - ntm.params) / ntm.params < 0.5


def test_bench_latency_command_writes_the_table(tmp_path, capsys):
    out = tmp_path / "lat"
    assert main(["bench", "latency", "--tiny", "--batch", "2", "--out", str(out)]) == 0
    saved = json.loads((out / "latency.json").read_text())
    rows = saved["rows"]
    assert {r["geometry"] for r in rows} == {g.name for g in GEOMETRIES}
    assert {r["tokens"] for r in rows} == {16, 256}
    for r in rows:
        assert r["latency_ms"] > 0 and r["throughput_per_s"] > 0 and r["batch"] == 2
        if r["model"] == "ar-flow-deep-shallow":
            assert r["latency_vs_ar"] == pytest.approx(1.0)
    assert "ar-flow-deep-shallow" in (out / "latency.md").read_text()
    assert "AR latency / this" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--train-steps", "3"], ["--batch", "0"]])
def test_bench_latency_refuses_flags_it_does_not_use(tmp_path, capsys, flag):
    assert main(["bench", "latency", "--tiny", "--out", str(tmp_path / "x"), *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntm bench: error:") and flag[0] in err.splitlines()[0], err
    assert len(err.strip().splitlines()) <= 2, err  # the problem, then where the help is
    assert not (tmp_path / "x").exists()
