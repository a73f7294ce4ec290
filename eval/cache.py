"""The on-disk cache of trained evaluators (the digits domain classifier, the shapes judge).

An evaluator is trained once, on the CPU and seeded, and kept as ``<cache_dir>/<key>.pt``, ``key`` being a
content hash of everything that decides its weights (the evaluator computes it). :func:`load_or_train` is
the one lookup: a hit is loaded, a miss is trained and written atomically (:func:`ntm.atomic.atomic_torch_save`:
concurrent writers cannot corrupt the file, a reader never sees a partial one). Files hold tensors and plain
containers only and are read with ``torch.load(weights_only=True)`` (:func:`read_payload`): reading a cache
never executes code from it.

The cache root is ``$NTM_CACHE`` (default ``~/.cache/ntm``); each evaluator has a subdirectory of it
(:func:`default_cache_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ntm.atomic import atomic_torch_save

CACHE_ENV = "NTM_CACHE"
"""Environment variable: root of ntm's caches (default ``~/.cache/ntm``)."""

M = TypeVar("M")


def default_cache_dir(name: str) -> Path:
    """``$NTM_CACHE/<name>`` if ``NTM_CACHE`` is set, else ``~/.cache/ntm/<name>``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "ntm") / name


def cache_path(key: str, cache_dir: str | Path | None, name: str) -> Path:
    """``<cache_dir>/<key>.pt``; ``cache_dir=None``: :func:`default_cache_dir` of ``name``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(name)
    return root / f"{key}.pt"


def write_payload(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (tensors and plain containers) to ``path`` atomically; parents are created."""
    return atomic_torch_save(payload, path)


def read_payload(path: str | Path, what: str) -> dict[str, Any]:
    """The dict written by :func:`write_payload`, read with ``torch.load(weights_only=True)`` on the CPU.

    ``FileNotFoundError`` naming the path if it does not exist; ``ValueError`` naming it if it cannot be read
    as tensors and plain containers or is not a dict. ``what`` names the evaluator in those messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable {what} checkpoint: {first}") from e
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a {what} checkpoint (it holds a {type(payload).__name__})")
    return payload


def load_or_train(path: Path, key: str, *, load: Callable[[Path], M], train: Callable[[], M],
                  save: Callable[[M, Path], Any]) -> M:
    """The evaluator cached at ``path``: ``load(path)`` when the file exists, else ``train()`` then
    ``save(model, path)``.

    The result has ``from_cache`` (whether it was loaded) and ``cache_path`` set, and a trained one
    ``info["key"] = key`` (a loaded one has the key its file holds, set by ``load``).
    """
    if path.exists():
        model = load(path)
        model.from_cache = True  # type: ignore[attr-defined]
        return model
    model = train()
    save(model, path)
    model.info["key"] = key  # type: ignore[attr-defined]
    model.cache_path = path  # type: ignore[attr-defined]
    model.from_cache = False  # type: ignore[attr-defined]
    return model


__all__ = ["CACHE_ENV", "cache_path", "default_cache_dir", "load_or_train", "read_payload", "write_payload"]
