"""``ntm bench loader``: loader rates per num_workers vs the training step, one table; every setting reads one epoch."""

from __future__ import annotations

import json

import pytest

from ntm.experiments.cli import main
from ntm.experiments.bench.loader import examples_digest


def test_bench_loader_writes_the_table_and_every_setting_reads_the_same_examples(tmp_path, capsys):
    out = tmp_path / "bl"
    args = ["bench", "loader", "--out", str(out), "--tiny", "--batch", "8", "--batches", "3", "--workers", "0", "2",
            "--steps", "1"]
    assert main(args) == 0
    result = json.loads((out / "loader.json").read_text())
    assert result["epoch_examples"] == 24 and result["whole_epochs"] and result["batch"] == 8
    step = result["step"]["examples_per_s"]
    assert step > 0
    rows = result["rows"]
    assert [r["num_workers"] for r in rows] == [0, 2]
    for r in rows:
        assert r["examples"] == r["distinct_examples"] == 24 and r["skipped"] == 0
        assert r["examples_per_s"] > 0 and r["startup_s"] >= 0
        assert r["verdict"] == ("data-bound" if r["examples_per_s"] < step else "compute-bound")
        assert r["expected_examples_per_s"] <= min(r["examples_per_s"], step) * (1 + 1e-9)
    # one epoch each, split over 0 or 2 workers and 8 shards: the same examples, whatever the order
    assert len({r["examples_digest"] for r in rows}) == 1
    table = (out / "loader.md").read_text()
    assert table.count("\n| ") == 1 + len(rows) and "verdict" in table
    assert "compute-bound" in capsys.readouterr().out or "data-bound" in table
    # the shards are reused by a second run with the same size
    shards = sorted(p.stat().st_mtime_ns for p in (out / "shards").glob("train-*.tar"))
    assert len(shards) == 8
    assert main([*args[:-4], "--workers", "1", "--steps", "1", "--grad-accum", "2"]) == 0
    assert sorted(p.stat().st_mtime_ns for p in (out / "shards").glob("train-*.tar")) == shards
    again = json.loads((out / "loader.json").read_text())
    assert again["rows"][0]["examples_digest"] == rows[0]["examples_digest"] and again["step"]["grad_accum"] == 2


def test_examples_digest_ignores_order_but_not_multiplicity():
    assert examples_digest(["a", "b", "c"]) == examples_digest(["c", "a", "b"])
    assert examples_digest(["a", "b"]) != examples_digest(["a", "b", "b"])


@pytest.mark.parametrize("flags,names", [
    (["--preset", "digits-ntm", "--workers", "0", "2"], "--workers"),
    (["--batch", "0"], "--batch"),
    (["--preset", "no-such"], "--preset"),
    (["--data-urls", "x.tar"], "--data-urls"),
    (["--batch", "6", "--grad-accum", "4"], "--grad-accum"),
    (["--preset", "imagenet64-pixels", "--latent-urls", "x.tar"], "--latent-urls"),
])
def test_bench_loader_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, names):
    assert main(["bench", "loader", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntm bench: error:") and names in err and len(err.strip().splitlines()) == 1, err
