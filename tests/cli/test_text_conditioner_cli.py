"""The command line with the conditioner slot: label presets train as before; a caption conditioner on a source
without captions is one clear error line."""

from __future__ import annotations

import json

from ntm.experiments.cli import main

TINY = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1",
        "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "32", "--train.steps", "2"]


def test_toy_preset_still_trains(tmp_path, capsys):
    assert main(["train", "toy-ntm", "--run-dir", str(tmp_path / "toy"), *TINY]) == 0
    assert "held-out K=4" in capsys.readouterr().out


def test_small_text_parses_with_its_fields(capsys):
    assert main(["train", "digits-ntm", "conditioner:small-text", "--conditioner.width", "64",
                 "--conditioner.context-length", "16", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["conditioner"] == {"name": "small-text", "dropout": 0.1, "context_length": 16, "width": 64,
                                     "depth": 2, "num_heads": 4}


def test_small_text_on_a_source_without_captions_is_one_error_line(tmp_path, capsys):
    rc = main(["train", "digits-ntm", "conditioner:small-text", "--run-dir", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err
    expected = ("ntm train: error: conditioner 'small-text' reads the batch field 'caption', but data source "
                "'digits' gives no captions; use a source with captions or another conditioner "
                "(conditioner:class, conditioner:none)")
    assert lines == [expected]
    assert not (tmp_path / "run").exists()  # refused before anything is written
