"""What every checkpoint format shares: the names in a run's checkpoint directory, completeness, error lines.

A run's ``checkpoints/`` directory holds, per saved step, a file ``step_<08d>.pt`` (:mod:`.file`) or a
directory ``step_<08d>/`` (:mod:`.dcp`), complete under that name (a directory once it holds
:data:`META_FILE`); writers work under temporary names holding :data:`~ntm.atomic.TMP_INFIX`, which no reader
picks up. :class:`CheckpointDirectory` knows those names, lists the complete steps, commits a finished
directory and prunes; :class:`~ntm.train.checkpoint.manager.CheckpointManager` adds what needs a format
(saving a file, loading the newest checkpoint).

This module imports no format: the formats import it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ntm.atomic import TMP_INFIX, PathLike, atomic_write_text, fsync_dir
from ntm.train.errors import CheckpointError

META_FILE = "meta.json"
"""The file a checkpoint directory is complete with (written last)."""

STEP_FILE_RE = re.compile(r"^step_(\d+)\.pt$")
STEP_DIR_RE = re.compile(r"^step_(\d+)$")


def first_line(err: BaseException, limit: int = 160) -> str:
    """A short one-line summary of a loader exception."""
    text = str(err)
    for line in text.splitlines():  # torch's weights-only error buries the cause in a later line
        if "WeightsUnpickler error:" in line:
            text = line.split("WeightsUnpickler error:", 1)[1]
            break
    text = " ".join(text.split())
    text = text.split(". ", 1)[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def is_checkpoint_dir(path: PathLike) -> bool:
    """Whether ``path`` is a complete checkpoint directory (one holding ``meta.json``)."""
    path = Path(path)
    return path.is_dir() and (path / META_FILE).is_file()


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`ntm.atomic.atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class CheckpointDirectory:
    """The checkpoint names of one directory: ``step_<08d>.pt`` files and ``step_<08d>/`` directories.

    Every file under a ``step_*.pt`` name is complete (files are written atomically), as is every ``step_*``
    directory holding ``meta.json`` (it gets its name only once complete, see :meth:`commit`), so the newest
    checkpoint is the highest step present. Temporary ``*.tmp-*`` files and directories are never picked up;
    those left by a killed writer are deleted by the next :meth:`commit` (or file save). A step saved in
    both formats is read from its directory. ``keep``: the newest steps that survive pruning (``None``: all);
    ``format``: the one :meth:`path_for` names for a step not saved yet. Only one process (rank 0) should
    commit or prune in a directory.
    """

    def __init__(self, directory: PathLike, keep: int | None = 3, *, format: Literal["file", "dcp"] = "file") -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 (or None to keep every checkpoint), got {keep}")
        if format not in ("file", "dcp"):
            raise ValueError(f"format must be 'file' or 'dcp', got {format!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.format = format

    def _file(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def _dir(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}"

    def path_for(self, step: int) -> Path:
        """The checkpoint of ``step``: its directory or file when present, else the name :attr:`format` gives."""
        if is_checkpoint_dir(self._dir(step)):
            return self._dir(step)
        if self._file(step).is_file():
            return self._file(step)
        return self._dir(step) if self.format == "dcp" else self._file(step)

    def temp_dir_for(self, step: int) -> Path:
        """Where a checkpoint directory of ``step`` is written before :meth:`commit` renames it."""
        return self.directory / f"step_{step:08d}{TMP_INFIX}dcp"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (file or directory), ascending."""
        if not self.directory.is_dir():
            return []
        found = set()
        for entry in self.directory.iterdir():
            m = STEP_FILE_RE.match(entry.name)
            if m and entry.is_file():
                found.add(int(m.group(1)))
            m = STEP_DIR_RE.match(entry.name)
            if m and is_checkpoint_dir(entry):
                found.add(int(m.group(1)))
        return sorted(found)

    def present(self) -> list[Path]:
        """Every entry under a checkpoint's final name (``step_<08d>.pt``, ``step_<08d>/``), complete or not
        (a directory without ``meta.json``, a damaged file): what a fresh start must not overwrite and a resume
        must account for. Temporaries are not listed. Newest step first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), entry) for entry in self.directory.iterdir()
                 if (m := STEP_FILE_RE.match(entry.name) or STEP_DIR_RE.match(entry.name))]
        return [entry for _, entry in sorted(found, key=lambda item: (-item[0], item[1].name))]

    def latest_path(self) -> Path | None:
        """The newest complete checkpoint, or ``None`` if there is none."""
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def begin(self, step: int) -> float:
        """Make :meth:`temp_dir_for` ``step`` afresh (a leftover of a killed save is deleted); returns the time,
        for :meth:`commit`."""
        check_step(step)
        started = time.time()
        tmp = self.temp_dir_for(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return started

    def commit(self, step: int, tmp: PathLike, meta: Mapping[str, Any], *, started: float | None = None) -> Path:
        """Complete the checkpoint directory ``tmp`` of ``step``: write ``meta`` as its ``meta.json`` (fsynced,
        atomic), rename it to ``step_<08d>`` (replacing one of the same step), then prune and delete
        temporaries older than ``started``. Returns the final directory."""
        tmp = Path(tmp)
        write_json(tmp / META_FILE, dict(meta))
        final = self._dir(step)
        aside = None
        if final.exists():  # the same step saved again (e.g. a non-finite loss right after a checkpoint)
            aside = final.with_name(f"{final.name}{TMP_INFIX}old-{uuid.uuid4().hex[:8]}")
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(self.directory)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        self._prune(keep_step=step)
        self._remove_stale_tmp(before=time.time() if started is None else started)
        return final

    def remove(self, step: int) -> None:
        """Delete the checkpoint of ``step`` (file and directory)."""
        self._file(step).unlink(missing_ok=True)
        if self._dir(step).is_dir():
            shutil.rmtree(self._dir(step))

    def _prune(self, keep_step: int) -> None:
        if self.keep is None:
            return
        steps = self.steps()
        for step in steps[: max(len(steps) - self.keep, 0)]:
            if step != keep_step:
                self.remove(step)

    def _remove_stale_tmp(self, before: float) -> None:
        """Delete ``step_*.pt.tmp-*`` files and ``step_*.tmp-*`` directories last modified before ``before`` (left by
        killed writers)."""
        for entry in self.directory.iterdir():
            name, sep, _ = entry.name.partition(TMP_INFIX)
            if not (sep and (STEP_FILE_RE.match(name) or STEP_DIR_RE.match(name))):
                continue
            try:
                if entry.stat().st_mtime < before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            except FileNotFoundError:
                pass


def check_step(step: Any) -> None:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


__all__ = [
    "META_FILE", "CheckpointDirectory", "CheckpointError", "PathLike", "first_line", "is_checkpoint_dir",
    "check_step", "write_json",
]
