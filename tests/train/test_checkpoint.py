"""Checkpoint files: atomicity under crashes, clear errors, rotation, RNG capture, config checks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntm.train import checkpoint as ckpt
from ntm.train.checkpoint import (
    CheckpointManager,
    check_config_matches,
    config_diff,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ntm.train.ema import EMA
from ntm.train.errors import CheckpointError, TrainingError


def _state(version: int, n: int = 1000) -> dict:
    return {"step": version, "w": torch.full((n,), float(version)), "meta": {"name": f"v{version}", "ok": True}}


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["step"] == b["step"]
    assert a["meta"] == b["meta"]
    assert torch.equal(a["w"], b["w"])


# -- save / load ---------------------------------------------------------------
def test_round_trip_of_a_realistic_state_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ema = EMA(model, 0.9)
    state = {
        "step": 7,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "ema": ema.state_dict(),
        "rng": rng_state(),
        "config": {"train": {"lr": 1e-3, "betas": [0.9, 0.99]}, "name": "x"},
    }
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, state)
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind

    loaded = load_checkpoint(path, required=("step", "model", "optimizer"))  # weights_only=True by default
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for idx, s in state["optimizer"]["state"].items():
        assert torch.equal(loaded["optimizer"]["state"][idx]["exp_avg"], s["exp_avg"])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    fresh = EMA(model, 0.9)
    fresh.load_state_dict(loaded["ema"])
    for k in ema.shadow:
        assert torch.equal(fresh.shadow[k], ema.shadow[k])


def test_failed_write_keeps_previous_file_and_leaves_no_partial(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    _assert_state_equal(load_checkpoint(path), _state(1))


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from ntm.train.checkpoint import CheckpointManager
    manager = CheckpointManager(sys.argv[1], keep=2)
    step = 0
    while True:
        step += 1
        # ~16 MB per checkpoint so a kill usually lands inside a write
        manager.save(step, {"step": step, "w": torch.full((4_000_000,), float(step))})
        print(f"saved {step}", flush=True)
    """
)


def test_sigkill_during_writes_leaves_a_complete_latest(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(directory)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        # wait until two checkpoints are complete, then until the third is being written
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "saved 2":
                break
        else:
            pytest.fail(f"writer exited early with code {proc.wait()}")
        deadline = time.monotonic() + 30
        while not any(".tmp-" in p.name and p.stat().st_size > 0 for p in directory.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "writer never started a third checkpoint"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL

    manager = CheckpointManager(directory, keep=2)
    latest = manager.latest_path()
    assert latest is not None
    loaded = manager.load_latest()
    assert loaded is not None
    path, state = loaded
    assert path == latest
    step = state["step"]
    assert step >= 2 and path.name == f"step_{step:08d}.pt"
    assert torch.equal(state["w"], torch.full((4_000_000,), float(step)))
    # every file under a final name is complete
    for s in manager.steps():
        assert load_checkpoint(manager.path_for(s))["step"] == s
    # the kill normally lands inside the next write: its partial file sits beside, under a temporary name
    partial = [p for p in directory.iterdir() if ".tmp-" in p.name]
    for p in partial:
        assert p.name.startswith(f"step_{step + 1:08d}.pt.tmp-")
        assert p.stat().st_size > 0


# -- errors --------------------------------------------------------------------
def _one_line_naming(err: CheckpointError, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "does not exist" in _one_line_naming(info.value, path)
    assert isinstance(info.value, TrainingError)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "corrupt" in _one_line_naming(info.value, path)


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", bytes(range(256)) * 10])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    _one_line_naming(info.value, path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    _one_line_naming(info.value, tmp_path)


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, path)  # a torch file, but not written by ntm
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "not an ntm checkpoint" in _one_line_naming(info.value, path)


class _Opaque:
    pass


def test_arbitrary_objects_are_refused_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "obj": _Opaque()})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only" in _one_line_naming(info.value, path)
    assert isinstance(load_checkpoint(path, weights_only=False)["obj"], _Opaque)


def test_missing_required_keys_and_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, required=("step", "model", "optimizer"))
    msg = _one_line_naming(info.value, path)
    assert "model, optimizer" in msg and "step," not in msg

    torch.save({ckpt.FORMAT_KEY: ckpt.FORMAT_VERSION + 1, "state": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "format version" in _one_line_naming(info.value, path)


def test_save_rejects_non_dict(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c.pt", [1, 2])  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


# -- manager -------------------------------------------------------------------
def test_manager_prunes_and_finds_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", keep=2)
    assert manager.latest_path() is None and manager.load_latest() is None
    for step in (10, 20, 30, 40):
        path = manager.save(step, _state(step))
        assert path.name == f"step_{step:08d}.pt"
        assert manager.latest_path() == path
    assert manager.steps() == [30, 40]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000030.pt", "step_00000040.pt"]
    path, state = manager.load_latest()  # type: ignore[misc]
    assert path.name == "step_00000040.pt"
    _assert_state_equal(state, _state(40))


def test_manager_keep_none_and_invalid_keep(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=None)
    for step in range(5):
        manager.save(step, {"step": step})
    assert manager.steps() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep=0)
    with pytest.raises(ValueError):
        manager.save(-1, {})


def test_stray_tmp_is_ignored_then_removed(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(5, _state(5))
    stray = tmp_path / "step_00000009.pt.tmp-12345-deadbeef"
    stray.write_bytes(b"partial")
    unrelated = tmp_path / "notes.tmp-1"
    unrelated.write_text("keep me")
    old = time.time() - 60
    os.utime(stray, (old, old))
    os.utime(unrelated, (old, old))

    assert manager.latest_path() == manager.path_for(5)
    _assert_state_equal(manager.load_latest()[1], _state(5))  # type: ignore[index]

    manager.save(6, _state(6))  # a successful save cleans up the killed writer's leftovers
    assert not stray.exists()
    assert unrelated.exists()
    assert manager.latest_path() == manager.path_for(6)


def test_load_latest_falls_back_past_a_damaged_newest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(1, _state(1))
    newest = manager.save(2, _state(2))
    newest.write_bytes(newest.read_bytes()[:100])  # damaged after the fact (e.g. on disk)
    with pytest.warns(UserWarning, match="step_00000002.pt"):
        path, state = manager.load_latest()  # type: ignore[misc]
    assert path == manager.path_for(1)
    _assert_state_equal(state, _state(1))
    with pytest.raises(CheckpointError, match="step_00000002.pt"):
        manager.load_latest(fallback=False)


# -- RNG -----------------------------------------------------------------------
def _draw() -> tuple:
    return (
        [random.random() for _ in range(5)],
        random.gauss(0.0, 1.0),
        np.random.rand(5).tolist(),
        float(np.random.standard_normal()),
        torch.rand(5).tolist(),
        torch.randn(3).tolist(),
    )


def test_rng_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0.0, 1.0)  # leave a cached gaussian in python's state
    np.random.standard_normal()  # and numpy's
    state = rng_state()
    first = _draw()
    second = _draw()
    assert first != second  # the generators really advanced

    set_rng_state(state)
    assert _draw() == first

    # through a checkpoint file, after disturbing everything
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draw() == first


# -- config checks ---------------------------------------------------------------
SAVED = {
    "model": {"width": 64, "depth": 4, "act": {"name": "gelu", "approx": False}},
    "train": {"lr": 1e-3, "max_steps": 1000, "betas": [0.9, 0.99]},
    "seed": 0,
    "old": 1,
}


def _current() -> dict:
    return {
        "model": {"width": 128, "depth": 4, "act": {"name": "gelu", "approx": True}},
        "train": {"lr": 1e-3, "max_steps": 5000, "betas": (0.9, 0.99)},  # tuple == list
        "seed": 0,
        "new": {"x": 1},
    }


def test_config_diff_lists_exact_paths() -> None:
    assert config_diff(SAVED, SAVED) == []
    assert config_diff(SAVED, _current()) == [
        "model.act.approx",
        "model.width",
        "new",
        "old",
        "train.max_steps",
    ]
    assert config_diff({"a": {"b": 1}}, {"a": 1}) == ["a"]
    assert config_diff({"a": 1}, {"a": True}) == ["a"]  # JSON keeps true and 1 apart
    assert config_diff({"a": 1}, {"a": 1.0}) == []


def test_check_config_matches_names_fields_and_honours_ignore(tmp_path: Path) -> None:
    path = tmp_path / "step_00000010.pt"
    check_config_matches(SAVED, SAVED, path=path)  # no error

    with pytest.raises(CheckpointError) as info:
        check_config_matches(SAVED, _current(), ignore={"train.max_steps", "new", "old"}, path=path)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {path} was written by a different config: ")
    assert "field model.width: 64 != 128" in msg
    assert "field model.act.approx: false != true" in msg
    assert "max_steps" not in msg and "new" not in msg and "old" not in msg
    assert "\n" not in msg

    with pytest.raises(CheckpointError, match=r"field old: 1 != <absent>; field train.max_steps: 1000 != 5000"):
        check_config_matches(SAVED, _current(), ignore={"model", "new"}, path=path)

    # a prefix ignores everything below it
    check_config_matches(SAVED, _current(), ignore={"model", "train.max_steps", "new", "old"}, path=path)
