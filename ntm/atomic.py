"""Atomic file writes: a file appears complete under its name, or not at all.

:func:`atomic_write` is the one implementation every writer of the project uses (checkpoints, cached
evaluators, latent-shard sidecars, figures): the bytes go to a temporary file in the target's own directory
(``<name>.tmp-<pid>-<token>``, unique per writer, so concurrent writers never share one), which is flushed and
fsynced, then ``os.replace``-d onto the final name (atomic on POSIX and Windows within one file system), and
the directory is fsynced where the platform allows, so the rename itself survives a power cut. If writing
raises, the temporary file is removed and whatever was under the name before is untouched; after a hard kill
only a stray ``*.tmp-*`` file can remain (:data:`TMP_INFIX` finds them).

It imports nothing from ``ntm``, so any module (data, figures, training, evaluation) can use it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

TMP_INFIX = ".tmp-"
"""What every temporary name holds between the final name and the writer's token."""

PathLike = str | os.PathLike[str]


def temp_path(path: PathLike) -> Path:
    """``<path>.tmp-<pid>-<token>``: unique per writer, in ``path``'s directory (so ``os.replace`` is atomic)."""
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: PathLike) -> None:
    """Persist the entries of ``directory`` (e.g. a rename into it); a no-op where directories cannot be fsynced."""
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


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (e.g. ``safetensors.save_file``); when
    the block completes, the file it wrote is fsynced and renamed onto ``path`` and the directory fsynced. If the
    block raises, the temporary file is deleted, ``path`` keeps its previous content (or stays absent) and the
    exception propagates. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, write: Callable[[IO[Any]], Any], *, text: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` and rename it onto ``path`` once complete
    (:func:`atomic_path`).

    ``f`` is opened in binary mode, or as UTF-8 text with ``text=True``. Parent directories are created. If
    ``write`` raises, ``path`` keeps its previous content (or stays absent) and the exception propagates.
    Returns ``path``.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") if text else open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: PathLike, content: str) -> Path:
    """Write ``content`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(content), text=True)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_write`); if saving raises, ``path`` is untouched.
    Returns the path."""
    return atomic_write(path, lambda f: torch.save(obj, f))


__all__ = ["TMP_INFIX", "atomic_path", "atomic_torch_save", "atomic_write", "atomic_write_text", "fsync_dir", "temp_path"]
