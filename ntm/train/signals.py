"""Stops that save: SIGTERM and SIGINT end a training run at the next step boundary with a checkpoint.

SIGTERM is how SLURM, Kubernetes and torchrun preempt a job; SIGINT is Ctrl-C. While :class:`StopSignals` is
installed, the first of either only records itself (saying so on a terminal); the training loop asks
:meth:`StopSignals.requested` after every step, saves a checkpoint (every rank, for a sharded one) and raises
:class:`TrainingStopped`, which the command line turns into exit status 128 + the signal's number (143 for
SIGTERM, 130 for SIGINT). A second signal exits at once with that status: whatever save was in flight is
abandoned, and since every checkpoint is written under a temporary name first (:mod:`ntm.train.checkpoint`),
the last complete checkpoint stays as it was.

Handlers can only be installed from the main thread; elsewhere (a training run in a worker thread) the
signals keep their default behaviour.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from ntm.train.errors import TrainingError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(TrainingError):
    """Training stopped on a signal after saving a checkpoint; ``exit_status`` is 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Record SIGTERM / SIGINT instead of dying while installed (a context manager); a second one exits at once.

    ``enabled=False`` (or a call off the main thread) installs nothing: :meth:`requested` stays ``None``.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print(f"ntm: {signal_name(signum)} again: exiting now; the last complete checkpoint is kept",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        if sys.stderr.isatty():  # someone pressed Ctrl-C and waits for the step to end; a log gets one line, at exit
            print(f"ntm: {signal_name(signum)}: stopping after this step with a checkpoint (again: exit at once)",
                  file=sys.stderr, flush=True)

    def requested(self) -> int | None:
        """The signal received, if any (its number)."""
        return self.signum

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "signal_name"]
