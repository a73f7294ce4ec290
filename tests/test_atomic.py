"""The one atomic writer (``ntm.atomic``) and its users: a failed write leaves the old file and no temporary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ntm.atomic as atomic
import ntm.data.latent_shards as ls
from ntm.atomic import TMP_INFIX, atomic_torch_save, atomic_write, atomic_write_text, temp_path
from ntm.train.checkpoint import save_checkpoint
from ntm.viz import load_png, save_png


class Crash(Exception):
    pass


def _half_then_crash(data: bytes):
    def write(f) -> None:
        f.write(data[: len(data) // 2])
        f.flush()
        raise Crash("simulated crash mid-write")

    return write


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old content"))
    with pytest.raises(Crash):
        atomic_write(path, _half_then_crash(b"new content that never lands"))
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Crash):
        atomic_write(tmp_path / "sub" / "f.json", _half_then_crash(b"{}"))
    assert not (tmp_path / "sub" / "f.json").exists() and list((tmp_path / "sub").iterdir()) == []


def test_writes_replace_whole_files_and_are_fsynced(tmp_path: Path, monkeypatch) -> None:
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    path = atomic_write_text(tmp_path / "a" / "b.txt", "first, longer text")
    assert atomic_write_text(path, "second") == path and path.read_text() == "second"
    assert len(synced) >= 4  # the file and its directory, twice
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))


def test_temporary_names_are_unique_and_beside_the_target(tmp_path: Path) -> None:
    a, b = temp_path(tmp_path / "x.png"), temp_path(tmp_path / "x.png")
    assert a != b and a.parent == b.parent == tmp_path and a.name.startswith("x.png" + TMP_INFIX)
    assert str(os.getpid()) in a.name


def test_every_writer_goes_through_it(tmp_path: Path, monkeypatch) -> None:
    """A PNG, a checkpoint and a latent-shard sidecar whose write dies before the rename (the bytes written, the
    file not yet in place) leave their previous file alone and no temporary."""
    png, ckpt, sidecar = tmp_path / "s.png", tmp_path / "c.pt", tmp_path / "latents.json"
    save_png(torch.zeros(1, 4, 4), png)
    save_checkpoint(ckpt, {"step": 1})
    ls._write_json_atomically(sidecar, {"format": "old"})
    before = {p: p.read_bytes() for p in (png, ckpt, sidecar)}

    def dies(src, dst):
        assert TMP_INFIX in Path(src).name and Path(src).stat().st_size > 0  # written in full, beside the target
        raise Crash("killed before the rename")

    monkeypatch.setattr(atomic.os, "replace", dies)
    with pytest.raises(Crash):
        save_png(torch.ones(1, 4, 4), png)
    with pytest.raises(Crash):
        save_checkpoint(ckpt, {"step": 2})
    with pytest.raises(Crash):
        ls._write_json_atomically(sidecar, {"format": "new"})
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "latents.json", "s.png"]
    assert torch.equal(load_png(png), torch.zeros(1, 4, 4))


def test_atomic_path_renames_what_the_block_wrote_or_nothing(tmp_path):
    from ntm.atomic import atomic_path

    target = tmp_path / "sub" / "model.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("mid-write")
    assert target.read_bytes() == b"first" and sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]
