"""Starting a run from another run's weights (e.g. finetuning from a flow-matching teacher).

An :class:`InitConfig` names a run directory or checkpoint file and maps
parameter-name prefixes of its sampling weights (EMA when present) onto the
new model's: ``{"predictor.xhat.": ("predictor.xhat.", "predictor.reference.")}``
copies the teacher's backbone into the finetuned backbone *and* its frozen
copy. The training loop applies it once, on a fresh start (never on resume),
before the optimizer and the EMA see the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pydantic
import torch
from torch import nn

from ntm.train.checkpoint import CheckpointManager, is_checkpoint_dir, read_sampling_state, sampling_state_dict
from ntm.train.errors import CheckpointError
from ntm.registry import ComponentConfig


class InitConfig(ComponentConfig):
    """Start from another run's weights: ``ntm train PRESET init:run --init.path RUN`` (every weight of the same
    name and shape), or the tensors under ``mapping``'s prefixes only."""

    cli_name: ClassVar[str] = "run"
    path: str
    """A run directory (its newest checkpoint) or a checkpoint file to take the weights from."""
    mapping: dict[str, tuple[str, ...]] = pydantic.Field(default_factory=dict)
    """Source prefix -> target prefixes; every source tensor under a prefix is copied to each target (empty: every
    tensor to the parameter of the same name)."""
    weights: str = "ema"
    """Which weights of the source: 'ema' (the weights it samples with) or 'raw'."""


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file or directory, or the newest checkpoint of a run directory; one-line errors name the path."""
    path = Path(path)
    if is_checkpoint_dir(path):
        return path
    if path.is_dir():
        latest = CheckpointManager(path / "checkpoints").latest_path()
        if latest is None:
            raise CheckpointError(f"no checkpoint in {path / 'checkpoints'}")
        return latest
    if not path.is_file():
        raise CheckpointError(f"{path} is neither a run directory nor a checkpoint file")
    return path


def mapped_state(source: dict[str, torch.Tensor], mapping: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` under each mapped prefix, renamed to every target prefix."""
    out: dict[str, torch.Tensor] = {}
    for src, targets in mapping.items():
        matched = {k[len(src):]: v for k, v in source.items() if k.startswith(src)}
        if not matched:
            raise CheckpointError(f"the source weights hold nothing under {src!r}")
        for dst in targets:
            out.update({dst + k: v for k, v in matched.items()})
    return out


def initialize_from(model: nn.Module, config: InitConfig) -> None:
    """Copy the mapped source weights into ``model`` (shapes must agree; unmapped weights keep their init)."""
    path = checkpoint_path(config.path)
    state = read_sampling_state(path, "raw" if config.weights == "raw" else "ema")
    weights = mapped_state(sampling_state_dict(state, config.weights), config.mapping or {"": ("",)})
    own = model.state_dict()
    for name, tensor in weights.items():
        if name not in own:
            raise CheckpointError(f"checkpoint {path} does not fit this model: it has no parameter {name!r}")
        if own[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {name} is {tuple(tensor.shape)} "
                                  f"there and {tuple(own[name].shape)} here")
    model.load_state_dict(weights, strict=False)


__all__ = ["InitConfig", "checkpoint_path", "initialize_from", "mapped_state"]
