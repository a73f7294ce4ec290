"""Config comparison on resume: a checkpoint's saved config against the run's, field by dotted field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ntm.atomic import PathLike
from ntm.train.errors import CheckpointError


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


__all__ = ["check_config_matches", "config_diff"]
