"""RunLogger files and the Progress display."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ntm.train.logging import Progress, RunLogger, format_duration


def _events(tb_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_metrics_jsonl_and_tensorboard(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLogger(run) as logger:
        for step in (1, 2, 3):
            logger.log_scalars(step, {"loss": 1.0 / step, "lr": torch.tensor(0.5 * step), "n": step})
        image = torch.zeros(3, 4, 5)
        image[0] = 1.0  # red
        logger.log_image("samples", 3, image)

    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [r["lr"] for r in records] == pytest.approx([0.5, 1.0, 1.5])
    assert all(isinstance(r["time"], float) for r in records)

    acc = _events(run / "tb")
    assert set(acc.Tags()["scalars"]) == {"loss", "lr", "n"}
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    images = acc.Images("samples")
    assert len(images) == 1 and images[0].step == 3
    assert (images[0].width, images[0].height) == (5, 4)
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_appends(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.log_scalars(1, {"loss": 2.0})
    logger.close()
    logger.close()  # idempotent
    logger = RunLogger(tmp_path, start_step=1)
    logger.log_scalars(2, {"loss": 1.0})
    logger.close()
    assert _steps(tmp_path) == [1, 2]


def test_a_resumed_run_drops_the_records_past_its_step_and_a_cut_line(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    for step in (1, 2, 3, 4):
        logger.log_scalars(step, {"loss": float(step)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "time": 1.0, "lo')  # a kill mid-write
    logger = RunLogger(tmp_path, start_step=4)
    logger.log_scalars(5, {"loss": 5.0})
    logger.close()
    assert _steps(tmp_path) == [1, 2, 3, 4, 5]  # the cut line is gone, not glued to the next record
    logger = RunLogger(tmp_path, start_step=2)  # resumed from an older checkpoint: steps 3.. are run again
    logger.close()
    assert _steps(tmp_path) == [1, 2]
    RunLogger(tmp_path).close()  # a fresh start keeps nothing
    assert _steps(tmp_path) == []


def test_lines_are_flushed_immediately(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.log_scalars(7, {"loss": 0.25})
    # readable by another process before close
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 7
    logger.close()


def test_non_finite_values_stay_strict_json(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log_scalars(1, {"loss": float("nan"), "g": float("inf")})
    text = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert math.isnan(float(record["loss"])) and float(record["g"]) == math.inf


def test_bad_inputs(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        with pytest.raises(ValueError, match="reserved"):
            logger.log_scalars(1, {"step": 3})
        with pytest.raises(ValueError, match="one element"):
            logger.log_scalars(1, {"loss": torch.zeros(2)})
        with pytest.raises(ValueError, match="C, H, W"):
            logger.log_image("x", 1, torch.zeros(2, 4, 4))
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_scalars(2, {"loss": 1.0})


def test_disabled_logger_creates_nothing(tmp_path: Path) -> None:
    run = tmp_path / "rank1"
    logger = RunLogger(run, enabled=False)
    logger.log_scalars(1, {"loss": 1.0})
    logger.log_image("x", 1, torch.zeros(3, 2, 2))
    logger.flush()
    logger.close()
    assert not run.exists()
    assert list(tmp_path.iterdir()) == []


# -- Progress ---------------------------------------------------------------------
def test_progress_prints_compact_lines_when_not_a_tty() -> None:
    stream = io.StringIO()  # isatty() is False
    progress = Progress(1000, initial=0, print_every=100, stream=stream)
    for _ in range(250):
        progress.update(1, loss=torch.tensor(1.23456))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 100, 200, and the close at 250
    assert lines[0].startswith("step 100/1000 loss 1.235 ")
    assert lines[1].startswith("step 200/1000 ")
    assert lines[2].startswith("step 250/1000 ")
    for line in lines:
        assert " it/s eta " in line


def test_progress_resumed_and_uneven_increments() -> None:
    stream = io.StringIO()
    progress = Progress(None, initial=950, print_every=100, stream=stream, desc="iter")
    progress.update(30)
    progress.update(30)  # crosses 1000
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iter 1010 ")
    assert "eta" not in lines[0]  # no total, no ETA


def test_progress_bar_mode_uses_tqdm() -> None:
    stream = io.StringIO()
    progress = Progress(10, bar=True, stream=stream, refresh_s=0.0)
    for _ in range(10):
        progress.update(1, loss=0.5)
    progress.close()
    out = stream.getvalue()
    assert "10/10" in out and "loss 0.5" in out


def test_disabled_progress_is_silent() -> None:
    stream = io.StringIO()
    progress = Progress(10, enabled=False, print_every=1, stream=stream)
    for _ in range(10):
        progress.update(1, loss=1.0)
    progress.close()
    assert stream.getvalue() == ""


def test_format_duration() -> None:
    assert format_duration(45) == "45s"
    assert format_duration(70) == "1m10s"
    assert format_duration(2 * 3600 + 3 * 60 + 5) == "2h03m"
    assert format_duration(26 * 3600) == "1d02h"
    assert format_duration(float("inf")) == "?"
