"""Reading checkpoints of either format into one process, and picking the weights to sample with.

:func:`load_checkpoint` reads a checkpoint file (:mod:`.file`) or a checkpoint directory (:mod:`.dcp`) alike,
so every reader of a run (resume, sampling, evaluation, finetuning) goes through it. The training loop's
checkpoints hold the raw weights under ``"model"`` and the EMA (:meth:`ntm.train.ema.EMA.state_dict`) under
``"ema"``; :func:`sampling_state_dict`, :func:`read_sampling_state` and :func:`load_sampling_weights` pick the
weights that sampling and evaluation use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from ntm.atomic import PathLike
from ntm.train.checkpoint.base import META_FILE, is_checkpoint_dir
from ntm.train.checkpoint.dcp import checkpoint_parts, read_checkpoint_dir
from ntm.train.checkpoint.file import read_checkpoint_file
from ntm.train.errors import CheckpointError


def load_checkpoint(
    path: PathLike,
    map_location: Any = "cpu",
    *,
    required: Iterable[str] = (),
    weights_only: bool = True,
    parts: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint file written by :func:`~ntm.train.checkpoint.file.save_checkpoint`, or a checkpoint
    directory, and return its state.

    ``required`` lists top-level keys the state must hold (e.g. ``("step",
    "model")``). ``weights_only=False`` unpickles arbitrary objects: only for
    trusted files that hold more than plain containers and tensors.

    A directory (:mod:`ntm.train.checkpoint.dcp`) is read into this process on the CPU
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
        return read_checkpoint_dir(path, parts, required=required, weights_only=weights_only)
    return read_checkpoint_file(path, map_location, required=required, weights_only=weights_only)


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


__all__ = ["load_checkpoint", "load_sampling_weights", "read_sampling_state", "sampling_state_dict"]
