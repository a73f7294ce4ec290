"""The launch of the two-rank tests: :func:`ntm.experiments.launch.run_ranks` (the benches'
launcher: a free port, retried when taken; output to a log file; the session and the recorded worker pids killed
on a timeout), with ``OMP_NUM_THREADS=1`` and a timeout failing the test with the end of the log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ntm.experiments.launch import run_ranks


def sitecustomize(directory: Path, source: str) -> Path:
    """Write ``source`` as ``directory/site/sitecustomize.py``; returns that folder, to put on ``PYTHONPATH``."""
    site = directory / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(source)
    return site


def torchrun(args: Sequence[str], log: Path, *, timeout_s: float, ranks: int | None = 2, what: str = "torchrun",
             env: Mapping[str, str] | None = None, site: Path | None = None, pid_file: Path | None = None,
             fresh: Sequence[Path] = (), grace_s: float = 0.0) -> tuple[int, str]:
    """``torchrun --nproc-per-node ranks ... args`` (``python args`` when ``ranks`` is None; see :func:`run_ranks`
    for ``pid_file``, ``fresh`` and ``grace_s``), ``site`` first on ``PYTHONPATH``. Returns the exit status and the
    log; past ``timeout_s`` everything is killed and the test fails, naming ``what``."""
    code, out = run_ranks(args, log, ranks=ranks, timeout_s=timeout_s, env={"OMP_NUM_THREADS": "1", **(env or {})},
                          pythonpath=[site] if site is not None else [], pid_file=pid_file, fresh=fresh,
                          grace_s=grace_s)
    if code is None:
        pytest.fail(f"{what} hung for {timeout_s}s (deadlock?):\n{out[-4000:]}")
    return code, out
