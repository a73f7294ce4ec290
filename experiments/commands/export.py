"""``ntm export``: a run as one self-contained, safe-to-share file (safetensors + JSON metadata), to sample from or
score without the run directory (``ntm.load(FILE)``, ``ntm sample --checkpoint FILE``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import tyro

from ntm.experiments.core import run_tyro
from ntm.experiments.runs import export_run
from ntm.experiments.exports import EXPORT_FORMAT

__all__ = ["EXPORT_FORMAT", "ExportArgs", "main"]


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Write a run's sampling weights as one .safetensors file (atomic) that needs neither the run directory nor
    its data: the experiment config, data statistics (shape, classes, normalisation, class prior) and, for a run on
    latents, the autoencoder travel in it; a distilled learned denoiser too, when the run has one. Reading it runs
    no code (no pickle). Reads only the sampling weights from a sharded checkpoint directory, whatever world size
    wrote it."""

    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint file or directory (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    out: Path | None = None
    """Output file (default: <run>/export/step_<08d>-<weights>.safetensors); replaced atomically if it exists."""


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, ExportArgs, prog="ntm export", argv=args)
    summary = export_run(a.run, a.checkpoint, a.weights, a.out)
    extra = [p for p in summary.parts if p != "model"]
    print(f"exported {a.run} ({summary.weights} weights, step {summary.step}, {summary.tensors} tensors, "
          f"{summary.bytes / 2**20:.1f} MiB{', with its ' + ' and '.join(extra) if extra else ''}) -> {summary.path}")
    for note in summary.notes:
        print(f"ntm export: note: {note}")
    return 0
