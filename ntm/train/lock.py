"""One writer per run directory: an advisory lock held for a training run's lifetime.

:class:`RunLock` takes an exclusive ``flock`` on ``<run_dir>/.lock`` and writes the holder's pid, host and
start time into it. The lock belongs to the open file, so the operating system frees it when the process ends
however it ends (``kill -9`` included): there is never a stale lock to clean up, and the file left behind
means nothing once unlocked. A second process asking for the same directory gets :class:`RunDirLocked`, one
line naming the holder. Under torchrun rank 0 holds the lock for every rank (the training loop takes it there
and tells the others whether it got it).

``flock`` is advisory: it keeps out other ntm processes, not a tool that ignores it. On a file system that
does not support it (some network mounts) the lock is skipped with a note rather than refusing to train.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO

from ntm.atomic import PathLike
from ntm.train.errors import TrainingError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunDirLocked(TrainingError):
    """Another process holds the run directory."""


class RunLock:
    """An exclusive advisory lock on ``run_dir`` (created if needed); :meth:`release` or process exit frees it.

    Use as a context manager or call :meth:`acquire` / :meth:`release`. ``acquire`` raises
    :class:`RunDirLocked` naming the holder's pid and host when another process holds it.
    """

    def __init__(self, run_dir: PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file: IO[str] | None = None
        self._made_dir = False

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> RunLock:
        if self._file is not None:
            return self
        self._made_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")
        if fcntl is None:
            self._file = file
            return self
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(self.path)
            file.close()
            self._tidy()
            raise RunDirLocked(f"run directory {self.run_dir} is in use by {holder}; wait for that run to end, "
                               "stop it, or pick another --run-dir") from None
        except OSError as e:  # no flock on this file system
            print(f"ntm: note: cannot lock {self.path} ({e.strerror}); make sure no other run writes there",
                  file=sys.stderr, flush=True)
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}) + "\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Free the lock (idempotent). The file stays (an unlocked ``.lock`` holds nobody), unless the lock made
        the run directory and nothing else was written there: then both go, leaving no trace of a run that
        stopped before it began."""
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
            self._tidy()

    def _tidy(self) -> None:
        if self._made_dir and [p.name for p in self.run_dir.iterdir()] in ([], [LOCK_FILE]):
            self.path.unlink(missing_ok=True)
            try:
                self.run_dir.rmdir()
            except OSError:  # someone wrote there meanwhile
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(path: Path) -> str:
    """``pid N on host H (since T)`` from a lock file, or what can be said without it."""
    try:
        info = json.loads(path.read_text(encoding="utf-8").strip() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = f" (since {info['started']})" if info.get("started") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')}{since}"


__all__ = ["LOCK_FILE", "RunDirLocked", "RunLock"]
