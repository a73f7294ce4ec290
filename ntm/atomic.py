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
import errno
import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
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
    exception propagates. Parent directories are created.

    A ``path`` that is a directory is refused before anything is written (:class:`IsADirectoryError` naming it);
    an :class:`OSError` of the write that names no file, or only the temporary one (``ENOSPC`` from a full disk,
    ``EDQUOT``), is raised again naming ``path`` (same errno, the original chained), so an error message can say
    which output failed."""
    path = Path(path)
    if path.is_dir():  # refused before anything is written: no temporary file is ever left beside it
        raise IsADirectoryError(errno.EISDIR, "is a directory; name a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno is not None and (e.filename is None or TMP_INFIX in os.fspath(e.filename)):  # name the target
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
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


def atomic_save_npy(path: PathLike, array: Any) -> Path:
    """``np.save`` of ``array`` (no pickles: ``allow_pickle=False``) to exactly ``path`` (no ``.npy`` appended)
    atomically (:func:`atomic_write`). Returns the path."""
    data = np.asarray(array)
    return atomic_write(path, lambda f: np.save(f, data, allow_pickle=False))


__all__ = ["TMP_INFIX", "atomic_path", "atomic_save_npy", "atomic_torch_save", "atomic_write", "atomic_write_text",
           "fsync_dir", "temp_path"]
