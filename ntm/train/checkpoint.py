"""Crash-safe checkpoints: single files and sharded directories, a rotating checkpoint directory, RNG capture
and config checks.

Two on-disk formats, read alike by :func:`load_checkpoint` (and so by every reader of a run):

- a **file** ``step_<08d>.pt``: ``torch.save`` of ``{"ntm_checkpoint": FORMAT_VERSION, "state": state}``.
  ``state`` is the caller's dict; keep it to plain containers (dicts, lists, tuples, str/int/float/bool/None)
  and tensors so that it loads with ``torch.load(weights_only=True)``. :func:`rng_state` and
  :meth:`ntm.train.ema.EMA.state_dict` follow that rule, as do the state dicts of ``nn.Module`` and the stock
  optimizers; store configs as ``model_dump(mode="json")`` dicts. Every write goes to a temporary file in the
  target directory that is fsynced and then ``os.replace``-d onto the final name, so a crash or SIGKILL at
  any moment leaves either the previous complete file or the new complete file under that name.
- a **directory** ``step_<08d>/`` written by ``torch.distributed.checkpoint``, every rank its own shards,
  with a ``meta.json`` (format, step, world size, config) written last and the directory renamed from
  ``step_<08d>.tmp-dcp`` once complete (:mod:`ntm.train.dcp`). Read into one process it gives the state a
  file holds (full tensors, whatever world size wrote it); ``parts`` reads only some entries.

The training loop's checkpoints hold the raw weights under ``"model"`` and the EMA
(:meth:`ntm.train.ema.EMA.state_dict`) under ``"ema"``; :func:`sampling_state_dict`,
:func:`read_sampling_state` and :func:`load_sampling_weights` pick the weights that sampling and
evaluation use.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ntm.train.errors import CheckpointError

FORMAT_KEY = "ntm_checkpoint"
"""Marker key of the on-disk wrapper; its value is the format version."""
FORMAT_VERSION = 1

_TMP_INFIX = ".tmp-"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
_DIR_RE = re.compile(r"^step_(\d+)$")

META_FILE = "meta.json"
"""The file a checkpoint directory is complete with (written last)."""

PathLike = str | os.PathLike[str]


# -- single files -----------------------------------------------------------
def _tmp_path(path: Path) -> Path:
    """``<path>.tmp-<pid>-<token>``: unique per writer, same directory (so ``os.replace`` is atomic)."""
    return path.with_name(f"{path.name}{_TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path`` (parent directories are created).

    The bytes go to ``<path>.tmp-<pid>-<token>``, are flushed and fsynced,
    the file is renamed onto ``path`` and the directory is fsynced. If
    ``torch.save`` raises, the temporary file is removed and ``path`` is
    untouched; after a hard kill only a stray ``*.tmp-*`` file can remain.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    atomic_torch_save({FORMAT_KEY: FORMAT_VERSION, "state": state}, path)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a flushed, fsynced temporary file renamed onto ``path`` (parent
    directories created, the directory fsynced); if saving raises, ``path`` is untouched. Returns the path."""
    return _atomic_write(Path(path), "wb", lambda f: torch.save(obj, f))


def _atomic_write(path: Path, mode: str, write: Any) -> Path:
    """``write(f)`` into a flushed, fsynced temporary file beside ``path`` (opened with ``mode``), renamed onto
    ``path``, the directory fsynced; parents are created. If ``write`` raises, ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _first_line(err: BaseException, limit: int = 160) -> str:
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


def load_checkpoint(
    path: PathLike,
    map_location: Any = "cpu",
    *,
    required: Iterable[str] = (),
    weights_only: bool = True,
    parts: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint file written by :func:`save_checkpoint`, or a checkpoint directory, and return its state.

    ``required`` lists top-level keys the state must hold (e.g. ``("step",
    "model")``). ``weights_only=False`` unpickles arbitrary objects: only for
    trusted files that hold more than plain containers and tensors.

    A directory (:mod:`ntm.train.dcp`) is read into this process on the CPU
    (``map_location`` does not apply) with full tensors; ``parts`` limits the
    entries read (e.g. ``("ema",)``; ``()``: only ``format``, ``step`` and
    ``config``) and ``required`` is checked against what it holds. A file is
    always read whole.

    Raises :class:`CheckpointError` (one line, naming the file) if the file is
    missing, unreadable, corrupt or truncated, not an ntm checkpoint, from a
    newer format, or lacks a required key; a directory also when it is
    partial (no ``meta.json``, or a rank's file missing or short).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise CheckpointError(f"checkpoint {path} is a directory without {META_FILE}: not a checkpoint, "
                                  "or a save that did not complete")
        from ntm.train.dcp import read_checkpoint_dir

        return read_checkpoint_dir(path, parts, required=required, weights_only=weights_only)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(e)})") from e
    except pickle.UnpicklingError as e:
        if weights_only and "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers ({_first_line(e)}); "
                "pass weights_only=False only if you trust the file"
            ) from e
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({_first_line(e)})") from e
    except Exception as e:  # truncated zip (RuntimeError), garbage (KeyError/EOFError/...)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from e

    if not isinstance(payload, dict) or FORMAT_KEY not in payload or not isinstance(payload.get("state"), dict):
        raise CheckpointError(
            f"checkpoint {path} is not an ntm checkpoint (no {FORMAT_KEY!r} marker with a 'state' dict)"
        )
    version = payload[FORMAT_KEY]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this ntm reads versions <= {FORMAT_VERSION}"
        )
    state: dict[str, Any] = payload["state"]
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing required keys: {', '.join(missing)}")
    return state


# -- the weights to sample with -------------------------------------------------
def sampling_state_dict(state: Mapping[str, Any], weights: Literal["ema", "raw"] = "ema") -> dict[str, Tensor]:
    """The model state dict to sample and evaluate with, from a loaded checkpoint ``state``.

    ``weights="ema"`` gives the EMA weights (the shadow parameters plus the
    buffers) when ``state`` holds an ``"ema"`` entry and the raw training
    weights ``state["model"]`` otherwise; ``weights="raw"`` always gives
    ``state["model"]``. Raises :class:`CheckpointError` when the chosen
    weights are absent.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if weights == "ema" and "ema" in state:
        return {**state["ema"]["shadow"], **state["ema"]["buffers"]}
    if "model" not in state:
        raise CheckpointError("checkpoint holds no model weights ('model' or 'ema')")
    return dict(state["model"])


def read_sampling_state(
    path: PathLike, weights: Literal["ema", "raw"] = "ema", *, required: Iterable[str] = ()
) -> dict[str, Any]:
    """A checkpoint's state as far as sampling needs it: ``step``, ``config`` and the weights
    :func:`sampling_state_dict` picks. A file is read whole; of a directory only those weights are read
    (the EMA, or the raw weights for ``"raw"`` or when it has no EMA), never the optimizer. ``required``
    as for :func:`load_checkpoint`."""
    path = Path(path)
    if not is_checkpoint_dir(path):
        return load_checkpoint(path, required=required)  # a file, or the one-line error of anything else
    from ntm.train.dcp import checkpoint_parts

    part = "ema" if weights == "ema" and "ema" in checkpoint_parts(path) else "model"
    return load_checkpoint(path, parts=(part,), required=required)


def load_sampling_weights(
    model: nn.Module,
    checkpoint: PathLike | Mapping[str, Any],
    weights: Literal["ema", "raw"] = "ema",
    *,
    path: PathLike | None = None,
) -> nn.Module:
    """Load the weights to sample with (see :func:`sampling_state_dict`) into ``model``; returns ``model``.

    ``checkpoint`` is a checkpoint file or directory (:func:`read_sampling_state`)
    or an already loaded state; ``path`` names the file of a loaded state in
    error messages. Raises
    :class:`CheckpointError` (one line, naming the file) if the file cannot be
    loaded or the weights do not fit ``model``. ``model``'s train/eval mode is
    left as it is.
    """
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        path = checkpoint
        state = read_sampling_state(checkpoint, weights)
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    try:
        state_dict = sampling_state_dict(state, weights)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not fit this model: {_load_error_line(e)}") from None
    return model


def _load_error_line(err: RuntimeError, limit: int = 240) -> str:
    """``load_state_dict``'s first problem on one line (its message is a header plus one line per problem)."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:2])
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- rotating directory -------------------------------------------------------
class CheckpointManager:
    """``directory/step_<08d>.pt`` files and ``directory/step_<08d>/`` checkpoint directories; the newest
    ``keep`` steps survive.

    There is no pointer file: every file under a ``step_*.pt`` name is
    complete (see :func:`save_checkpoint`), as is every ``step_*`` directory
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
        return self.directory / f"step_{step:08d}{_TMP_INFIX}dcp"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (file or directory), ascending."""
        if not self.directory.is_dir():
            return []
        found = set()
        for entry in self.directory.iterdir():
            m = _STEP_RE.match(entry.name)
            if m and entry.is_file():
                found.add(int(m.group(1)))
            m = _DIR_RE.match(entry.name)
            if m and is_checkpoint_dir(entry):
                found.add(int(m.group(1)))
        return sorted(found)

    def latest_path(self) -> Path | None:
        """The newest complete checkpoint, or ``None`` if there is none."""
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` as the checkpoint file of ``step``, then prune; returns its path."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        started = time.time()
        path = self._file(step)
        save_checkpoint(path, state)
        self._prune(keep_step=step)
        self._remove_stale_tmp(before=started)
        return path

    def begin(self, step: int) -> float:
        """Make :meth:`temp_dir_for` ``step`` afresh (a leftover of a killed save is deleted); returns the time,
        for :meth:`commit`."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
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
        _write_json(tmp / META_FILE, dict(meta))
        final = self._dir(step)
        aside = None
        if final.exists():  # the same step saved again (e.g. a non-finite loss right after a checkpoint)
            aside = final.with_name(f"{final.name}{_TMP_INFIX}old-{uuid.uuid4().hex[:8]}")
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(self.directory)
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

    def load_latest(
        self,
        map_location: Any = "cpu",
        *,
        required: Iterable[str] = (),
        fallback: bool = True,
        parts: Iterable[str] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """``(path, state)`` of the newest loadable checkpoint, or ``None`` if the directory has none.

        With ``fallback`` an unreadable newest one (e.g. damaged on disk, a
        rank's file missing) emits a warning and the next older one is tried;
        if none loads, the error of the newest is raised. ``parts`` applies to
        directories (see :func:`load_checkpoint`).
        """
        required = tuple(required)
        parts = None if parts is None else tuple(parts)
        steps = self.steps()
        first_error: CheckpointError | None = None
        for step in reversed(steps):
            path = self.path_for(step)
            try:
                return path, load_checkpoint(path, map_location, required=required, parts=parts)
            except CheckpointError as e:
                if not fallback:
                    raise
                first_error = first_error or e
                warnings.warn(f"skipping unloadable checkpoint: {e}", stacklevel=2)
        if first_error is not None:
            raise first_error
        return None

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
            name, sep, _ = entry.name.partition(_TMP_INFIX)
            if not (sep and (_STEP_RE.match(name) or _DIR_RE.match(name))):
                continue
            try:
                if entry.stat().st_mtime < before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            except FileNotFoundError:
                pass


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (fsynced temporary file renamed onto it)."""
    _atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=2) + "\n"))


# -- RNG --------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states: python ``random``, numpy's global RNG, torch CPU, and CUDA if available.

    Tensors and plain containers only, so it round-trips through
    ``torch.load(weights_only=True)``. In a multi-process run each rank
    should store its own.
    """
    version, mt, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    if np_state["bit_generator"] != "MT19937":  # pragma: no cover - numpy's global RNG is always MT19937
        raise TypeError(f"unsupported numpy bit generator {np_state['bit_generator']!r}")
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured.

    CUDA states are restored for the devices both the state and this process
    have; a missing ``"cuda"`` entry (checkpoint from a CPU run) leaves CUDA alone.
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["key"].cpu().numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["gauss"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        for device, dev_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(dev_state.cpu(), device)


# -- config comparison --------------------------------------------------------
class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _same(a: Any, b: Any) -> bool:
    """Equality for JSON-like values; tuples equal lists, NaN equals NaN."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):  # JSON keeps true and 1 apart
        return False
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _diff(saved: Any, current: Any, prefix: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for key in sorted({*saved, *current}, key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            _diff(saved.get(key, _ABSENT), current.get(key, _ABSENT), path, out)
    elif not _same(saved, current):
        out.append((prefix or "<root>", saved, current))


def _config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    _diff(saved, current, "", out)
    return out


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Sorted dotted paths of the fields that differ; nested dicts are recursed, added/removed keys count."""
    return [path for path, _, _ in _config_differences(saved, current)]


def _ignored(path: str, ignore: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in ignore)


def _show(value: Any, limit: int = 60) -> str:
    if value is _ABSENT:
        return "<absent>"
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_config_matches(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Iterable[str] = frozenset(),
    path: PathLike | None = None,
) -> None:
    """Raise :class:`CheckpointError` if the saved and current configs differ outside ``ignore``.

    ``ignore`` holds dotted paths; a path also ignores everything below it
    (``"train"`` covers ``"train.max_steps"``). The message lists each field
    as ``field a.b: <saved> != <current>``.
    """
    ignore = tuple(ignore)
    diffs = [d for d in _config_differences(saved, current) if not _ignored(d[0], ignore)]
    if not diffs:
        return
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    fields = "; ".join(f"field {p}: {_show(a)} != {_show(b)}" for p, a, b in diffs)
    raise CheckpointError(f"{where} was written by a different config: {fields}")
