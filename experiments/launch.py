"""The torchrun launcher of the benches and the multi-rank tests: ``python -m torch.distributed.run`` on
127.0.0.1 in a session of its own, stopped whole (workers included) past its time, retried on a fresh port when the
probed one is taken."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
"""Variables a surrounding launcher sets, dropped from the launched environment."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, pid_file: Path | None, grace_s: float) -> None:
    """Stop the process's session: SIGTERM (torchrun stops its workers on it) and ``grace_s`` to exit, then SIGKILL
    (at once when ``grace_s`` is 0); then SIGKILL the pids listed in ``pid_file`` (torchrun starts each worker in a
    session of its own, which the first signals miss)."""
    if grace_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pid_file.read_text().split() if pid_file is not None and pid_file.is_file() else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


def run_ranks(args: Sequence[str], log: Path, *, ranks: int | None, timeout_s: float,
              env: Mapping[str, str] | None = None, pythonpath: Sequence[str | Path] = (),
              pid_file: Path | None = None, fresh: Sequence[Path] = (), grace_s: float = 30.0,
              tries: int = 3) -> tuple[int | None, str]:
    """``python -m torch.distributed.run --nproc-per-node RANKS ... ARGS`` on 127.0.0.1 (``python ARGS`` when
    ``ranks`` is None), from the repository, in a session of its own, its output to ``log`` (a file: a pipe would be
    held open by stray workers).

    The environment is this process's without the variables a surrounding launcher sets (``RANK``, ``MASTER_PORT``,
    ...), with ``OMP_NUM_THREADS=1`` unless set, ``pythonpath`` put before ``PYTHONPATH``, and ``env`` over it.
    The master port is probed free; when it is taken before torchrun binds it ("address already in use"), the
    launch is retried on a fresh port, up to ``tries`` launches. Before each launch ``pid_file`` and the files and
    directories of ``fresh`` are removed. Past ``timeout_s`` the launch is stopped (:func:`_stop`). Returns the
    exit status (``None`` when it was stopped) and the log."""
    repo = Path(__file__).resolve().parents[1]
    full = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    full.setdefault("OMP_NUM_THREADS", "1")
    full["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [full.get("PYTHONPATH")])])
    if not full["PYTHONPATH"]:
        del full["PYTHONPATH"]
    full.update(env or {})
    code: int | None = 1
    for _ in range(tries if ranks is not None else 1):
        for path in [*fresh, *([pid_file] if pid_file is not None else [])]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        launcher = [] if ranks is None else ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                                             "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, *launcher, *args], cwd=repo, env=full, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop(proc, pid_file, grace_s)
                return None, log.read_text()
        text = log.read_text()
        if ranks is not None and code != 0 and "address already in use" in text.lower():
            continue
        return code, text
    return code, log.read_text()
