"""``ntm export``: a run's sampling weights and config as one file, to share or to sample from."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Literal

import pydantic
import tyro

from ntm.experiments.config import Experiment
from ntm.experiments.core import run_tyro
from ntm.experiments.runs import load_experiment
from ntm.train.checkpoint import (
    CheckpointError, CheckpointManager, check_config_matches, read_sampling_state, sampling_state_dict, save_checkpoint,
)
from ntm.train.config import RESUMABLE_FIELDS


EXPORT_FORMAT = "ntm-export-1"


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Write a run's sampling weights and config as one file (atomic): for sharing, or for ntm sample --checkpoint.
    Reads only those weights from a sharded checkpoint directory, whatever world size wrote it."""

    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint file or directory (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    out: Path | None = None
    """Output file (default: <run>/export/step_<08d>-<weights>.pt); replaced atomically if it exists."""


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, ExportArgs, prog="ntm export", argv=args)
    exp = load_experiment(Path(a.run) / "config.json")
    checkpoint = a.checkpoint or CheckpointManager(Path(a.run) / "checkpoints").latest_path()
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {Path(a.run) / 'checkpoints'}")
    state = read_sampling_state(checkpoint, a.weights, required=("step", "config"))
    saved = state["config"]
    with contextlib.suppress(pydantic.ValidationError):  # a config in an older layout, read as today's
        saved = Experiment.model_validate(saved).model_dump(mode="json")
    check_config_matches(saved, exp.model_dump(mode="json"), ignore=RESUMABLE_FIELDS, path=checkpoint)
    try:
        tensors = sampling_state_dict(state, a.weights)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {checkpoint}: {e}") from None
    step = int(state["step"])
    payload: dict[str, Any] = {"format": EXPORT_FORMAT, "step": step, "config": state["config"],
                               "source": str(checkpoint)}
    if a.weights == "ema" and "ema" in state:
        payload["ema"] = state["ema"]
    else:
        payload["model"] = tensors
    out = a.out or Path(a.run) / "export" / f"step_{step:08d}-{a.weights}.pt"
    save_checkpoint(out, payload)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"exported {checkpoint} ({a.weights} weights, step {step}, {len(tensors)} tensors, {size / 2**20:.1f} MiB) "
          f"-> {out}")
    return 0
