"""Oracle-NLL gap of NTM (TarFlow transporter) vs the identity transporter on a 2-D mixture, per K.

    ntm bench oracle-gap --steps 1 2 4 --train-steps 1500 --out runs/oracle-gap

Trains both models of each K with the same preset, budget and seed through
the regular training loop, then scores fresh data against the mixture's exact
trajectory NLL (docs/math.md §10). Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path


from ntm.eval.oracle import oracle_gap
from ntm.experiments.build import train_job
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.train.loop import train
from ntm.transporters import IdentityConfig


@dataclasses.dataclass(frozen=True)
class OracleGapArgs:
    """Model NLL minus the oracle's on a Gaussian mixture, TarFlow vs identity transporter, per K."""

    steps: tuple[int, ...] = (1, 2, 4)
    """Step counts K to compare."""
    train_steps: int = 1500
    """Optimizer steps per model (the same budget for every model)."""
    preset: str = "toy-ntm"
    """Base preset (its data must be a mixture with an oracle)."""
    out: Path = Path("runs/oracle-gap")
    """Output directory."""
    device: str = "auto"
    """Training device: auto, cpu or cuda."""
    eval_examples: int = 16384
    """Fresh examples scored per model."""
    seed: int = 0
    """Training seed."""
    transporter_blocks: int | None = None
    """Override the TarFlow block count (transporter capacity)."""


def variants(args: OracleGapArgs) -> list[tuple[int, str, Experiment]]:
    """``(K, transporter label, experiment)`` per K: the preset's TarFlow (``--transporter-blocks`` blocks), then identity."""
    base = PRESETS[args.preset]
    tarflow = base.model.transporter
    if args.transporter_blocks is not None:
        tarflow = tarflow.replace(num_blocks=args.transporter_blocks)
    train = base.train.replace(steps=args.train_steps, warmup_steps=min(base.train.warmup_steps, args.train_steps),
                               device=args.device, precision="fp32", seed=args.seed, sample_every=0,
                               checkpoint_every=args.train_steps, log_every=max(args.train_steps // 10, 1))
    out = []
    for k in args.steps:
        for label, transporter in (("tarflow", tarflow), ("identity", IdentityConfig())):
            name = f"{args.preset}-{label}-K{k}"
            model = base.model.replace(transporter=transporter, process=base.model.process.replace(steps=(k,)))
            out.append((k, label, base.replace(name=name, run_dir=str(args.out / name), model=model, train=train)))
    return out


def run(args: OracleGapArgs) -> list[dict]:
    rows = []
    for k, transporter, exp in variants(args):
        data = exp.data.build()
        started = time.monotonic()
        result = train(train_job(exp, data))
        gap = oracle_gap(result.ema_model, data.mixture, k, num_examples=args.eval_examples, seed=args.seed + 1)
        row = {"K": k, "transporter": transporter, "train_steps": result.steps,
               "wall_seconds": time.monotonic() - started, **gap}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| K | transporter | model bpd | oracle bpd | gap bpd | gap ratio (tarflow / identity) |", "|---|---|---|---|---|---|"]
    for k in args.steps:
        tar = next(r for r in rows if r["K"] == k and r["transporter"] == "tarflow")
        ide = next(r for r in rows if r["K"] == k and r["transporter"] == "identity")
        ratio = tar["gap_bpd"] / ide["gap_bpd"] if ide["gap_bpd"] > 0 else float("nan")
        for r in (tar, ide):
            shown = f"{ratio:.3f}" if r is tar else ""
            lines.append(f"| {k} | {r['transporter']} | {r['model_bpd']:.4f} | {r['oracle_bpd']:.4f} | {r['gap_bpd']:.4f} | {shown} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows
