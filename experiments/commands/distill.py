"""``ntm distill --run RUN``: distill the run's learned one-pass denoiser into <run>/denoiser/."""

from __future__ import annotations

import tyro

from ntm.experiments.core import run_tyro
from ntm.experiments.distill import DistillArgs, distill


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, DistillArgs, prog="ntm distill", argv=args,
                 description="Distill the run's learned one-pass denoiser (docs/math.md §8) into <run>/denoiser/.")
    distill(a)
    return 0
