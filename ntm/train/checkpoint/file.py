"""The single-file checkpoint format: ``step_<08d>.pt``, one ``torch.save`` written atomically.

The file holds ``{"ntm_checkpoint": FORMAT_VERSION, "state": state, "sha256": digest}``: ``digest`` is
:func:`tensor_digest` of ``state``, checked when the file is read, so bytes flipped inside a tensor (which
``torch.load`` reads without complaint: it does not check the zip's CRCs) make the file unloadable instead of
silently loading damaged weights. Files written before the digest load unchecked. ``state`` is the caller's dict; keep it
to plain containers (dicts, lists, tuples, str/int/float/bool/None) and tensors so that it loads with
``torch.load(weights_only=True)``. :func:`~ntm.train.checkpoint.rng.rng_state` and
:meth:`ntm.train.ema.EMA.state_dict` follow that rule, as do the state dicts of ``nn.Module`` and the stock
optimizers; store configs as ``model_dump(mode="json")`` dicts. Every write goes through
:func:`ntm.atomic.atomic_write`, so a crash or SIGKILL at any moment leaves either the previous complete file
or the new complete file under that name.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ntm.atomic import PathLike, atomic_torch_save
from ntm.train.checkpoint.base import first_line
from ntm.train.errors import CheckpointError

FORMAT_KEY = "ntm_checkpoint"
"""Marker key of the on-disk wrapper; its value is the format version."""
FORMAT_VERSION = 1


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path`` (parent directories are created).

    The bytes go to ``<path>.tmp-<pid>-<token>``, are flushed and fsynced,
    the file is renamed onto ``path`` and the directory is fsynced. If
    ``torch.save`` raises, the temporary file is removed and ``path`` is
    untouched; after a hard kill only a stray ``*.tmp-*`` file can remain.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    atomic_torch_save({FORMAT_KEY: FORMAT_VERSION, "state": state, "sha256": tensor_digest(state)}, path)


def tensor_digest(obj: Any) -> str:
    """SHA-256 over every tensor in ``obj`` (nested dicts, lists, tuples) in order: its key path, dtype, shape and
    bytes. Unpickling keeps dict order, so a loaded state has the digest of the saved one."""
    digest = hashlib.sha256()

    def walk(where: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}|{value.dtype}|{tuple(value.shape)}|".encode())
            if t.numel():
                digest.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{where}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{where}/{i}", v)

    walk("", obj)
    return digest.hexdigest()


def read_checkpoint_file(
    path: PathLike, map_location: Any = "cpu", *, required: Iterable[str] = (), weights_only: bool = True
) -> dict[str, Any]:
    """The state of checkpoint file ``path`` (written by :func:`save_checkpoint`), read whole.

    ``required`` lists top-level keys the state must hold. ``weights_only=False`` unpickles arbitrary
    objects: only for trusted files. Raises :class:`CheckpointError` (one line, naming the file) if the file
    is unreadable, corrupt or truncated, not an ntm checkpoint, from a newer format, or lacks a required key.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(e)})") from e
    except pickle.UnpicklingError as e:
        if weights_only and "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers ({first_line(e)}); "
                "pass weights_only=False only if you trust the file"
            ) from e
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({first_line(e)})") from e
    except Exception as e:  # truncated zip (RuntimeError), garbage (KeyError/EOFError/...)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first_line(e)})") from e

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
    if "sha256" in payload and payload["sha256"] != tensor_digest(state):
        raise CheckpointError(f"checkpoint {path} fails its checksum: its tensors are not the bytes that were saved "
                              "(damaged on disk or in transfer)")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing required keys: {', '.join(missing)}")
    return state


__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "atomic_torch_save", "read_checkpoint_file", "save_checkpoint",
           "tensor_digest"]
