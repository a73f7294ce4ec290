"""``ntm autoencoder train PRESET [--field value] [--resume] [--dry-run]``: train an autoencoder run."""

from __future__ import annotations

import json

from ntm.experiments.autoencoder import AE_PRESETS, AutoencoderExperiment, train_autoencoder
from ntm.experiments.autoencoder import __doc__ as autoencoder_doc
from ntm.experiments.core import UsageError, pop_flag, run_tyro
from ntm.registry import did_you_mean
from ntm.registry.cli import parse


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(autoencoder_doc.strip())
        return 0 if args else 2
    if args[0] != "train":
        raise UsageError(f"unknown autoencoder command {args[0]!r}; commands: train")
    args = list(args[1:])
    resume = pop_flag(args, "--resume")
    dry_run = pop_flag(args, "--dry-run")
    if not args:
        raise UsageError(f"name an autoencoder preset: {', '.join(AE_PRESETS)}")
    first = args[0]
    if not first.startswith("-") and ":" not in first and first not in AE_PRESETS:
        raise UsageError(f"unknown autoencoder preset {first!r}{did_you_mean(first, list(AE_PRESETS))}; "
                         f"presets: {', '.join(AE_PRESETS)}")
    exp = run_tyro(parse, AutoencoderExperiment, presets=AE_PRESETS, prog="ntm autoencoder train", argv=args,
                   description="Train an autoencoder. Extra flags: --resume, --dry-run.")
    if dry_run:
        print(json.dumps(exp.model_dump(mode="json"), indent=2))
        return 0
    train_autoencoder(exp, resume=resume)
    return 0
