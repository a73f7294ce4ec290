"""``ntm bench checkpoint``: one 2-rank torchrun at 1 M parameters; the table's structure, each rank writing its half
of a DCP checkpoint, rank 0 alone writing the file, every checkpoint loading. Memory and time are benchmark
numbers: not asserted here."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from ntm.experiments.bench.checkpoint import MODES, check_loads, peak_rss
from ntm.experiments.cli import main

gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                          reason="torch.distributed with gloo is required")


@pytest.mark.slow
@gloo
def test_bench_checkpoint_splits_dcp_bytes_evenly_and_every_checkpoint_loads(tmp_path, capsys):
    out = tmp_path / "bc"
    args = ["bench", "checkpoint", "--out", str(out), "--params-m", "1", "--ranks", "2", "--keep-checkpoints"]
    assert main(args) == 0
    result = json.loads((out / "checkpoint.json").read_text())
    assert result["ranks"] == 2 and result["width"] % 4 == 0 and abs(result["params"] - 1e6) < 0.1e6
    state = result["state_bytes"]
    assert state >= 16 * result["params"]  # weights, two AdamW moments, the EMA: float32 each
    assert [m["mode"] for m in result["modes"]] == list(MODES)
    for m in result["modes"]:
        assert m["loads"] and m["load_error"] is None, m["load_error"]
        rows = m["ranks"]
        assert [r["rank"] for r in rows] == [0, 1]
        total = m["bytes_written"]
        assert total == sum(r["bytes_written"] for r in rows)
        for r in rows:
            assert abs(r["shard_bytes"] - state / 2) <= 0.05 * state / 2  # the widths shard evenly
            assert r["written_share"] == pytest.approx(r["bytes_written"] / (total / 2))
            assert r["peak_extra_mib"] == pytest.approx(r["peak_extra_bytes"] / 2**20)
            assert r["peak_extra_x_shard"] == pytest.approx(r["peak_extra_bytes"] / r["shard_bytes"])
            assert r["memory"]["samples"] >= 2 and 0 <= r["blocking_s"] <= r["written_s"]
        if m["format"] == "dcp":  # each rank its half, everything written once
            assert all(abs(r["written_share"] - 1) <= 0.05 for r in rows), rows
            assert 0.99 * state <= total <= 1.25 * state
        else:  # one file, gathered and written by rank 0
            assert [r["bytes_written"] for r in rows] == [total, 0] and 0.99 * state <= total <= 1.05 * state
    table = (out / "checkpoint.md").read_text()
    assert table.count("\n| ") == 1 + 2 * len(MODES) and table.count("| yes |") == 2 * len(MODES)
    assert table in capsys.readouterr().out

    # the loads column can say no: a changed tensor, a rank's file cut short
    sync, expected = out / "checkpoints" / "sync" / "step_00000001", result["modes"][0]
    checksums = json.loads((out / "ranks" / "rank0.json").read_text())["checksums"]
    assert expected["loads"] and check_loads(sync, checksums) is None
    key = next(k for k in checksums if k.startswith("ema.shadow."))
    changed = {**checksums, key: [checksums[key][0], checksums[key][1] + 1.0, checksums[key][2]]}
    assert key in check_loads(sync, changed)
    rank1 = sync / "__1_0.distcp"
    rank1.write_bytes(rank1.read_bytes()[: rank1.stat().st_size // 2])
    problem = check_loads(sync, checksums)
    assert problem is not None and "__1_0.distcp" in problem and "\n" not in problem


def test_peak_rss_sees_an_allocation_freed_before_the_body_ends():
    with peak_rss() as memory:
        x = torch.ones(16 * 2**20)  # 64 MiB, written
        del x
    assert memory["extra"] >= 60 * 2**20 and memory["peak"] >= memory["baseline"] + memory["extra"] - 1


@pytest.mark.parametrize("flags,name", [(["--params-m", "0"], "--params-m"), (["--ranks", "0"], "--ranks"),
                                        (["--params-m", "nan"], "--params-m")])
def test_bench_checkpoint_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, name):
    assert main(["bench", "checkpoint", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntm bench: error:") and name in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
