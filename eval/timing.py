"""Cost measurement: median wall-clock time and peak memory growth of a callable.

Wall time is ``time.perf_counter`` around each call, with
``torch.cuda.synchronize`` before and after on CUDA so queued kernels are
counted. Memory is the *growth* during a call over what was in use when it
started (so numbers are comparable across devices and ignore weights already
resident):

- CUDA: ``torch.cuda.max_memory_allocated - torch.cuda.memory_allocated`` (peak
  stats reset before each call); exact for the caching allocator's tensors.
- CPU: the process's resident set size (``/proc/self/statm``) sampled by a
  background thread every :data:`RSS_SAMPLE_INTERVAL_S` seconds (plus once at the
  start and once at the end of the call), peak minus the starting value.
  Resolution: one page (4 KiB) in size, ~1 ms in time. A buffer that lives
  for less than the sampling interval can be missed; the thread needs the GIL,
  so during a long pure-Python stretch samples come only every
  ``sys.getswitchinterval()`` (5 ms) — large torch ops release the GIL and are
  sampled normally. RSS is the whole process: other threads' allocations
  count too, and memory the allocator reuses without returning it to the OS
  (small blocks, an already-grown heap) shows up as no growth. Where
  ``/proc/self/statm`` does not exist (not Linux) ``peak_mem_mb`` is ``None``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any, Callable

import torch

RSS_SAMPLE_INTERVAL_S = 0.001
"""Period of the CPU resident-set sampler (seconds)."""

_STATM = "/proc/self/statm"
_MB = 1024.0 * 1024.0


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4096


_PAGE = _page_size()


def rss_bytes() -> int | None:
    """Current resident set size of this process in bytes, or ``None`` where ``/proc/self/statm`` is missing."""
    try:
        with open(_STATM, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class RssPeak:
    """Context manager: peak RSS growth (bytes) inside the ``with`` block, in ``.peak_growth``.

    ``.peak_growth`` is ``None`` when RSS cannot be read on this platform.
    """

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.peak_growth: int | None = None
        self._start: int | None = None
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = rss_bytes()
        if rss is not None and rss > self._peak:
            self._peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "RssPeak":
        self._start = rss_bytes()
        if self._start is not None:
            self._peak = self._start
            self._thread = threading.Thread(target=self._run, name="ntm-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._sample()  # catch what is still live at the end of the block
            self._stop.set()
            self._thread.join()
            self.peak_growth = max(0, self._peak - self._start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    n: int | None = None,
    track_memory: bool = True,
) -> dict[str, float | None]:
    """Time ``fn()`` (no arguments) ``repeats`` times after ``warmup`` untimed calls.

    Returns ``wall_ms`` (median over the repeats), ``wall_ms_per_sample``
    (``wall_ms / n``, only when ``n`` — the number of samples one call
    produces — is given), ``peak_mem_mb`` (the largest per-call memory growth
    over the repeats, MiB; see the module docstring for how it is measured and
    its resolution; ``None`` when unavailable or ``track_memory=False``) and
    ``repeats``. ``device`` says where ``fn`` runs: ``"cpu"`` or a CUDA device.
    The RSS sampler thread costs a little CPU; pass ``track_memory=False`` for
    the cleanest timings.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 samples, got {n}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())

    for _ in range(warmup):
        fn()
    _sync(dev)

    times_ms: list[float] = []
    peaks: list[int] = []
    mem_ok = track_memory
    for _ in range(repeats):
        if dev.type == "cuda":
            if track_memory:
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            _sync(dev)
            start = time.perf_counter()
            fn()
            _sync(dev)
            times_ms.append((time.perf_counter() - start) * 1e3)
            if track_memory:
                peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        elif track_memory:
            with RssPeak() as mem:
                start = time.perf_counter()
                fn()
                times_ms.append((time.perf_counter() - start) * 1e3)
            if mem.peak_growth is None:
                mem_ok = False
            else:
                peaks.append(mem.peak_growth)
        else:
            start = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - start) * 1e3)

    wall_ms = statistics.median(times_ms)
    out: dict[str, float | None] = {"wall_ms": wall_ms}
    if n is not None:
        out["wall_ms_per_sample"] = wall_ms / n
    out["peak_mem_mb"] = max(peaks) / _MB if mem_ok and peaks else None
    out["repeats"] = repeats
    return out


__all__ = ["RSS_SAMPLE_INTERVAL_S", "RssPeak", "measure", "rss_bytes"]
