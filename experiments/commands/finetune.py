"""``ntm finetune --from TEACHER [PRESET] [--field value] [--resume] [--dry-run]``: an NTM started from a
flow-matching teacher's weights (docs/finetuning.md), trained like any run."""

from __future__ import annotations

from ntm.experiments.config import Experiment
from ntm.experiments.core import UsageError, pop_flag, pop_value, run_tyro
from ntm.experiments.finetune import finetune_base, finetune_presets, load_teacher
from ntm.experiments.training import TrainRequest, check_preset, run_request
from ntm.registry.cli import parse


def _default_preset(teacher: Experiment, presets: dict[str, Experiment]) -> str:
    same_data = [name for name, exp in presets.items() if type(exp.data) is type(teacher.data)]
    if not same_data:
        raise UsageError(f"name a finetune preset for this teacher's data: {', '.join(presets)}")
    return same_data[0]


def parse_finetune(args: list[str]) -> TrainRequest:
    args = list(args)
    source = pop_value(args, "--from")
    if source is None:
        raise UsageError("--from RUN_OR_CHECKPOINT is required: the flow-matching teacher to start from")
    resume = pop_flag(args, "--resume")
    dry_run = pop_flag(args, "--dry-run")
    teacher = load_teacher(source)
    presets = finetune_presets()
    name = args.pop(0) if args and not args[0].startswith("-") and ":" not in args[0] else _default_preset(teacher, presets)
    if name not in presets:
        check_preset([name])  # did-you-mean over every preset
        raise UsageError(f"{name!r} is not a finetune preset; finetune presets: {', '.join(presets)}")
    base = finetune_base(teacher, source, presets[name])
    description = (f"Finetune an NTM from the flow-matching teacher {source} (preset {name}). Extra flags: "
                   "--resume, --dry-run.")
    exp = run_tyro(parse, Experiment, default=base, prog=f"ntm finetune --from {source} {name}", argv=args,
                   description=description)
    return TrainRequest(exp, resume, dry_run)


def main(args: list[str]) -> int:
    return run_request(parse_finetune(args), "finetune")
