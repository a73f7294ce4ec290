"""Run logging (``metrics.jsonl`` + TensorBoard) and a progress display.

:class:`RunLogger` writes to ``run_dir/metrics.jsonl`` (one JSON object per
call, flushed per line) and to TensorBoard event files under ``run_dir/tb``.
A resumed run continues both from its checkpoint's step: ``start_step`` drops
the records past it (a line cut mid-write included) and TensorBoard purges the
events past it, so a resumed run's file holds what an uninterrupted one would. :class:`Progress` shows a
tqdm bar on a terminal and prints a compact line every ``print_every`` steps
elsewhere (CI, log files). Both take ``enabled=False`` on non-zero ranks,
which turns every method into a no-op.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from ntm.atomic import atomic_write

_RESERVED = ("step", "time")


def _scalar(name: str, value: Any) -> float | int:
    """A python number from a number, 0-d/1-element tensor or numpy scalar (a tensor syncs its device)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"scalar {name!r} must have one element, got shape {tuple(value.shape)}")
        return value.detach().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise TypeError(f"scalar {name!r} must be a number or a one-element tensor, got {kind}") from None


def _json_number(value: float | int) -> float | int | str:
    """Strict JSON has no NaN/inf: they become ``"nan"``, ``"inf"``, ``"-inf"`` (which ``float()`` reads)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Scalars to ``metrics.jsonl`` and TensorBoard, images to TensorBoard.

    Args:
        run_dir: the run's directory (created if needed).
        enabled: ``False`` (non-zero ranks) makes every method a no-op and creates no files.
        start_step: the step training starts from (a resumed run's checkpoint step; 0: a fresh start).
            ``metrics.jsonl`` keeps only its records of steps up to it, and TensorBoard's events after it
            are purged: the steps about to be run again are logged once.
    """

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True, *, start_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.start_step = start_step
        self._metrics: IO[str] | None = None
        self._writer: Any = None  # SummaryWriter, created on first use (importing tensorboard is slow)
        self._closed = False
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(self.metrics_path, start_step)
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def tb_dir(self) -> Path:
        return self.run_dir / "tb"

    def _tb(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at steps >= it, written before a kill, are dropped when the run goes on
            self._writer = SummaryWriter(str(self.tb_dir), purge_step=self.start_step + 1)
        return self._writer

    def _usable(self) -> bool:
        if not self.enabled:
            return False
        if self._closed:
            raise RuntimeError(f"RunLogger for {self.run_dir} is closed")
        return True

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Append ``{"step", "time", **scalars}`` to ``metrics.jsonl`` and write each scalar to TensorBoard.

        Values may be numbers or one-element tensors (converted with ``.item()``).
        Non-finite values are written to the JSON line as ``"nan"``/``"inf"``/``"-inf"``.
        """
        if not self._usable():
            return
        clash = [k for k in scalars if k in _RESERVED]
        if clash:
            raise ValueError(f"scalar names {clash} are reserved in metrics.jsonl")
        now = time.time()
        values = {str(k): _scalar(str(k), v) for k, v in scalars.items()}
        record = {"step": int(step), "time": round(now, 3), **{k: _json_number(v) for k, v in values.items()}}
        assert self._metrics is not None
        self._metrics.write(json.dumps(record, allow_nan=False) + "\n")
        self._metrics.flush()
        writer = self._tb()
        for k, v in values.items():
            writer.add_scalar(k, v, global_step=int(step), walltime=now)

    def log_image(self, tag: str, step: int, image: Tensor) -> None:
        """Write an image: a ``(C, H, W)`` tensor with C in {1, 3, 4} (or ``(H, W)``), values in ``[0, 1]``.

        Values outside ``[0, 1]`` are clamped, NaN becomes 0.
        """
        if not self._usable():
            return
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"image {tag!r} must be (C, H, W) with C in 1, 3, 4, got shape {tuple(image.shape)}")
        img = torch.nan_to_num(image.detach().float().cpu(), nan=0.0).clamp_(0.0, 1.0)
        self._tb().add_image(tag, img, global_step=int(step), dataformats="CHW")

    def flush(self) -> None:
        if not self.enabled or self._closed:
            return
        if self._metrics is not None:
            self._metrics.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the files; idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._metrics is not None:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` at ``path`` up to ``step`` (in file order, stopping at the first
    record past it) and drop a last line cut mid-write; the file is rewritten atomically, and only when something
    is dropped."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    kept: list[bytes] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a record cut by a kill (or garbage): nothing after it is trusted
            break
        if not line.endswith(b"\n") or not isinstance(record, dict) or not isinstance(record.get("step"), int):
            break
        if record["step"] > step:
            break
        kept.append(line)
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write(b"".join(kept)))


def format_duration(seconds: float) -> str:
    """Compact duration: ``45s``, ``1m10s``, ``2h03m``, ``1d04h``; ``?`` if unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _format_postfix(postfix: Mapping[str, Any]) -> str:
    parts = []
    for k, v in postfix.items():
        if isinstance(v, (Tensor, float, int)) and not isinstance(v, bool):
            v = _scalar(k, v)
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        else:
            parts.append(f"{k} {v}")
    return " ".join(parts)


class Progress:
    """Progress over ``total`` steps with rate, ETA and live values such as the loss.

    On a terminal (or ``bar=True``) this is a tqdm bar on ``stream``
    (stderr by default). Otherwise (or ``bar=False``) a line such as
    ``step 100/1000 loss 1.234 12.3 it/s eta 1m10s`` is printed whenever
    the count passes a multiple of ``print_every`` (``0``: never), and at
    :meth:`close`. ``enabled=False`` prints nothing at all.

    Postfix values may be tensors; they are only converted (a device sync)
    when displayed, at most every ``refresh_s`` seconds for the bar.

    Args:
        total: number of steps, or ``None`` if unknown (no ETA).
        initial: count to start from (a resumed run's step).
        desc: label in front of the count.
    """

    def __init__(
        self,
        total: int | None,
        *,
        initial: int = 0,
        desc: str = "step",
        enabled: bool = True,
        bar: bool | None = None,
        print_every: int = 100,
        stream: IO[str] | None = None,
        refresh_s: float = 0.5,
    ) -> None:
        if print_every < 0:
            raise ValueError(f"print_every must be >= 0, got {print_every}")
        self.total = total
        self.initial = initial
        self.count = initial
        self.desc = desc
        self.enabled = enabled
        self.print_every = print_every
        self.stream = stream if stream is not None else sys.stderr
        self.refresh_s = refresh_s
        self._start = time.monotonic()
        self._last_postfix_t = -math.inf
        self._last_printed = initial
        self._postfix: dict[str, Any] = {}
        self._bar: Any = None
        self._closed = False
        if enabled:
            if bar is None:
                isatty = getattr(self.stream, "isatty", None)
                bar = bool(isatty and isatty())
            if bar:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True, unit="it"
                )

    @property
    def rate(self) -> float:
        """Steps per second since construction (steps before ``initial`` not counted)."""
        elapsed = time.monotonic() - self._start
        return (self.count - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        """Seconds left at the current rate (``inf`` if unknown)."""
        rate = self.rate
        if self.total is None or rate <= 0:
            return math.inf
        return max(self.total - self.count, 0) / rate

    def line(self) -> str:
        """The compact status line, e.g. ``step 100/1000 loss 1.234 12.3 it/s eta 1m10s``."""
        count = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        parts = [f"{self.desc} {count}"]
        if self._postfix:
            parts.append(_format_postfix(self._postfix))
        parts.append(f"{self.rate:.3g} it/s")
        if self.total is not None:
            parts.append(f"eta {format_duration(self.eta())}")
        return " ".join(parts)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; keyword values (e.g. ``loss=...``) replace the displayed ones."""
        if not self.enabled or self._closed:
            return
        self.count += n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            now = time.monotonic()
            if postfix and now - self._last_postfix_t >= self.refresh_s:
                self._last_postfix_t = now
                self._bar.set_postfix_str(_format_postfix(self._postfix), refresh=False)
            self._bar.update(n)
        elif self.print_every and self.count // self.print_every > self._last_printed // self.print_every:
            self._print()

    def _print(self) -> None:
        self._last_printed = self.count
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar, or print a last line if steps were made since the last one; idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            if self._postfix:
                self._bar.set_postfix_str(_format_postfix(self._postfix), refresh=False)
            self._bar.close()
        elif self.print_every and self.count != self._last_printed:
            self._print()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
