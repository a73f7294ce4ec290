"""``ntm ablate SUITE --slot SLOT=A,B ...``: a grid over variants, trained and scored as bench rows
(:mod:`ntm.experiments.bench.ablate`)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import tyro

from ntm.experiments.bench.ablate import (DEFAULT_STEPS, SUITE_PRESETS, ablation_suite, add_ratios, parse_slots)
from ntm.experiments.bench.report import results_table
from ntm.experiments.bench.runner import run_suite
from ntm.experiments.core import UsageError, run_tyro
from ntm.registry import did_you_mean


@dataclasses.dataclass(frozen=True)
class AblateArgs:
    suite: tyro.conf.Positional[str]
    """toy (the 2-D mixture: oracle gap, energy distance) or digits (held-out NLL, domain FID)."""
    slot: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """SLOT=NAME,NAME,...: the names to try in one slot (repeatable; the grid is their product)."""
    steps: tuple[int, ...] = (4,)
    """Step counts K: one model per K per cell."""
    out: Path = Path("runs/ablate")
    """Output directory (results.json, results.md, plots, figures, runs/)."""
    train_steps: int | None = None
    """Training steps of every cell (default: the preset's: toy 1,500, digits 1,200)."""
    num_samples: int | None = None
    """Samples per cell (default: toy 4,000, digits 1,000)."""
    seed: int = 0
    """Training seed shared by every cell."""
    device: str = "auto"
    """Where to train and sample."""
    tiny: bool = False
    """Shrink every network to a minimum (smoke tests)."""


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, AblateArgs, prog="ntm ablate", argv=args)
    if a.suite not in SUITE_PRESETS:
        raise UsageError(f"unknown ablation suite {a.suite!r}{did_you_mean(a.suite, list(SUITE_PRESETS))}; "
                         f"suites: {', '.join(SUITE_PRESETS)}")
    if not a.steps or any(k < 1 for k in a.steps):
        raise UsageError(f"--steps takes step counts >= 1, got {list(a.steps)}")
    try:
        slots = parse_slots(a.slot)
    except ValueError as e:
        raise UsageError(str(e)) from None
    started = time.monotonic()
    suite = ablation_suite(a.suite, slots, tuple(a.steps), train_steps=a.train_steps or DEFAULT_STEPS[a.suite],
                           seed=a.seed, tiny=a.tiny,
                           num_samples=a.num_samples or (4000 if a.suite == "toy" else 1000))
    rows = run_suite(suite, a.out, device=a.device)
    add_ratios(rows, a.suite, slots)
    (a.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (a.out / "results.md").write_text(results_table(rows))
    print((a.out / "results.md").read_text())
    print(f"ablate {a.suite}: {len(rows)} cells in {time.monotonic() - started:.0f}s -> {a.out}")
    return 0

