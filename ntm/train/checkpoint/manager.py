"""The rotating checkpoint directory of a run: save a file, commit a directory, load the newest, prune."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ntm.train.checkpoint.base import CheckpointDirectory, check_step, is_checkpoint_dir
from ntm.train.checkpoint.file import save_checkpoint
from ntm.train.checkpoint.load import load_checkpoint
from ntm.train.errors import CheckpointError


class CheckpointManager(CheckpointDirectory):
    """``directory/step_<08d>.pt`` files and ``directory/step_<08d>/`` checkpoint directories; the newest
    ``keep`` steps survive.

    There is no pointer file: every file under a ``step_*.pt`` name is
    complete (see :func:`~ntm.train.checkpoint.file.save_checkpoint`), as is every ``step_*`` directory
    holding ``meta.json`` (it gets its name only once complete, see
    :meth:`commit`), so the newest checkpoint is the highest step present, and
    a kill during any write leaves the previous one in place. Temporary
    ``*.tmp-*`` files and directories are never picked up; those left by a
    killed writer are deleted by the next successful :meth:`save` or
    :meth:`commit`. Both formats may sit side by side (a run resumed from a
    file with ``train.checkpoint_format dcp``); a step with both is read from
    its directory.

    ``format`` is the one :meth:`path_for` names for a step not saved yet.
    Only one process (rank 0) should save, commit or prune in a directory.
    """

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` as the checkpoint file of ``step``, then prune; returns its path."""
        check_step(step)
        started = time.time()
        path = self._file(step)
        save_checkpoint(path, state)
        self._prune(keep_step=step)
        self._remove_stale_tmp(before=started)
        return path

    def load_latest(
        self,
        map_location: Any = "cpu",
        *,
        required: Iterable[str] = (),
        fallback: bool = True,
        parts: Iterable[str] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """``(path, state)`` of the newest loadable checkpoint, or ``None`` if the directory has none.

        With ``fallback`` an unreadable newest one (e.g. damaged on disk, failing its checksum, a
        rank's file missing) emits a warning naming it and the next older one is tried;
        if none loads, one :class:`CheckpointError` lists every checkpoint and why it did not load (the
        directory's incomplete ones included). ``parts`` applies to
        directories (see :func:`~ntm.train.checkpoint.load.load_checkpoint`).
        """
        required = tuple(required)
        parts = None if parts is None else tuple(parts)
        steps = self.steps()
        errors: list[CheckpointError] = []
        for step in reversed(steps):
            path = self.path_for(step)
            try:
                return path, load_checkpoint(path, map_location, required=required, parts=parts)
            except CheckpointError as e:
                if not fallback:
                    raise
                errors.append(e)
                warnings.warn(f"skipping unloadable checkpoint: {e}", stacklevel=2)
        incomplete = [p for p in self.present() if p.is_dir() and not is_checkpoint_dir(p)]
        if len(errors) == 1 and not incomplete:
            raise errors[0]
        if errors or incomplete:
            why = [str(e) for e in errors] + [f"{p} is incomplete (a save that did not finish)" for p in incomplete]
            raise CheckpointError(f"no checkpoint in {self.directory} loads: " + "; ".join(why))
        return None


__all__ = ["CheckpointManager"]
