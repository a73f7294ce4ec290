"""The ``ntm`` command: ``train``, ``sample``, ``eval`` (tyro).

    ntm train digits-ntm                                   # a preset
    ntm train toy-ntm transporter:identity --predictor.depth 6
    ntm train --config runs/digits-ntm/config.json          # reproduce a run
    ntm train digits-ntm --resume                           # continue after a crash
    ntm sample --run runs/digits-ntm --guidance 1.5 --steps 4
    ntm eval --run runs/digits-ntm
    ntm bench toy --out runs/bench-toy                      # baselines vs NTM, one table
    ntm shards write --folder images/ --out 'shards/train-%06d.tar'

User errors (bad config, bad data, wrong checkpoint) print one line per
problem and exit with status 2; a non-finite loss exits with status 3 and
keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import tyro

from eval.nll import heldout_nll
from experiments.build import build_model, layout_for, sample_picture, train_job
from experiments.config import Experiment
from experiments.presets import PRESETS
from ntm.data.base import DataError
from ntm.forward import ScheduleError
from ntm.train.checkpoint import CheckpointError, CheckpointManager, check_config_matches, load_checkpoint
from ntm.train.config import RESUMABLE_FIELDS
from ntm.train.errors import NonFiniteLossError, TrainingError
from ntm.train.loop import CHECKPOINT_KEYS, train
from ntm.viz import save_png
from registry import RegistryError, deferred_validation, registry_slots

USER_ERRORS = (pydantic.ValidationError, DataError, RegistryError, ScheduleError, TrainingError, FileNotFoundError)


class UsageError(Exception):
    pass


def format_error(err: BaseException) -> str:
    """One line per problem; pydantic errors name the field."""
    if isinstance(err, pydantic.ValidationError):
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
        return "\n".join(lines)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# -- train ----------------------------------------------------------------------
def _pop_flag(args: list[str], flag: str) -> bool:
    if flag in args:
        args.remove(flag)
        return True
    return False


def _pop_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag:
            if i + 1 >= len(args):
                raise UsageError(f"{flag} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if a.startswith(flag + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"config file {path} is not valid JSON: {e}") from None
    return Experiment.model_validate(data)


def check_subcommands(args: list[str]) -> None:
    """Name an unknown ``slot:variant`` with the registry's known variants (before tyro's generic message)."""
    slots = registry_slots(Experiment)
    for token in args:
        if token.startswith("-") or ":" not in token:
            continue
        slot, variant = token.rsplit(":", 1)
        if slot in slots and variant not in slots[slot]:
            known = ", ".join(slots[slot].names())
            raise RegistryError(f"{token}: unknown {slots[slot].kind} {variant!r}; known {slots[slot].kind}s: {known}")


def parse_experiment(args: list[str]) -> tuple[Experiment, bool]:
    """``(experiment, resume)`` from ``ntm train`` arguments."""
    args = list(args)
    check_subcommands(args)
    resume = _pop_flag(args, "--resume")
    config_path = _pop_value(args, "--config")
    description = "Train an NTM. Extra flags: --config FILE (start from a saved config.json), --resume."
    base = load_experiment(config_path) if config_path is not None else None
    # tyro builds the config tree unvalidated; one validation afterwards reports every bad field by its path
    with deferred_validation():
        if base is not None:
            exp = tyro.cli(Experiment, default=base, args=args, config=(tyro.conf.CascadeSubcommandArgs,),
                           prog="ntm train --config FILE", description=description)
        else:
            cli_type = tyro.conf.CascadeSubcommandArgs[tyro.extras.subcommand_type_from_defaults(PRESETS)]
            exp = tyro.cli(cli_type, args=args, prog="ntm train", description=description)
    return Experiment.model_validate(exp.model_dump(mode="json")), resume


def train_command(args: list[str]) -> int:
    exp, resume = parse_experiment(args)
    data = exp.data.build()
    job = train_job(exp, data, resume=resume)
    result = train(job)
    if result.ema_model is None:  # not rank 0
        return 0
    run_dir = Path(exp.resolved_run_dir)
    model = result.ema_model
    steps = list(exp.eval.steps or exp.process.steps)
    t0 = time.monotonic()
    try:
        nll = heldout_nll(model, data, layout_for(exp, data), steps, batch_size=exp.eval.batch_size,
                          max_examples=exp.eval.num_examples, seed=exp.eval.seed)
    except DataError as e:
        print(f"ntm train: note: no held-out NLL: {e}", file=sys.stderr)
        nll = {}
    image, samples, labels = sample_picture(exp, model, data)
    save_png(image, run_dir / "samples" / "final.png")
    np.save(run_dir / "samples" / "final.npy", samples.numpy())
    if labels is not None:
        np.save(run_dir / "samples" / "final_labels.npy", labels.numpy())
    headline = nll.get(max(steps), {})
    final = {
        "nll_traj_bpd": headline.get("nll_traj_bpd"),
        "bound_bpd": headline.get("bound_bpd"),
        "per_k": {str(k): v for k, v in nll.items()},
        "steps": result.steps,
        "wall_seconds": result.wall_seconds,
        "examples_per_second": result.examples_per_second,
        "eval_seconds": time.monotonic() - t0,
    }
    (run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    print(f"trained {exp.name}: {result.steps} steps in {result.wall_seconds:.1f}s "
          f"({result.examples_per_second:.0f} examples/s)")
    for k, v in nll.items():
        print(f"held-out K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} bpd "
              f"({v['examples']} examples)")
    print(f"samples: {run_dir / 'samples' / 'final.png'}")
    return 0


# -- loading a run ----------------------------------------------------------------
def load_run(run: Path, checkpoint: Path | None = None, weights: str = "ema"):
    """``(experiment, data, model)`` from a run directory (EMA weights by default)."""
    exp = load_experiment(Path(run) / "config.json")
    data = exp.data.build()
    if checkpoint is None:
        checkpoint = CheckpointManager(Path(run) / "checkpoints").latest_path()
        if checkpoint is None:
            raise CheckpointError(f"no checkpoint in {Path(run) / 'checkpoints'}")
    state = load_checkpoint(checkpoint, required=CHECKPOINT_KEYS)
    check_config_matches(state["config"], exp.model_dump(mode="json"), ignore=RESUMABLE_FIELDS, path=checkpoint)
    model = build_model(exp, data)
    weights_state = state["model"] if weights == "raw" else {**state["ema"]["shadow"], **state["ema"]["buffers"]}
    try:
        model.load_state_dict(weights_state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this model: {str(e).splitlines()[0]}") from None
    return exp, data, model.eval()


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint file (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: int | None = None
    """Number of steps K (any K the model supports; default: the largest trained)."""
    guidance: float | None = None
    """Classifier-free guidance weight (default: the run's sampler setting)."""
    temperature: float | None = None
    """Sampling temperature (default: the run's sampler setting)."""
    denoise: bool = True
    """Apply the run's denoiser to x_{t_0}."""
    seed: int | None = None
    """Sampling seed (default: the run's eval seed)."""
    out: Path | None = None
    """Output PNG (a .npy of the samples is written beside it); default: <run>/samples/sample.png."""


def sample_command(args: list[str]) -> int:
    a = tyro.cli(SampleArgs, args=args, prog="ntm sample")
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    if a.steps is not None and a.steps not in exp.process.steps:
        schedule = exp.process.schedule.build()
        if not schedule.supports(a.steps):
            raise UsageError(f"--steps {a.steps}: the schedule does not define K = {a.steps}")
    image, samples, labels = sample_picture(exp, model, data, num_steps=a.steps, guidance=a.guidance,
                                            temperature=a.temperature, denoise=a.denoise, seed=a.seed)
    out = a.out or Path(a.run) / "samples" / "sample.png"
    save_png(image, out)
    np.save(out.with_suffix(".npy"), samples.numpy())
    print(f"wrote {out} and {out.with_suffix('.npy')} ({samples.shape[0]} samples)")
    return 0


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint file (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: tuple[int, ...] | None = None
    """Step counts K to score (default: every K trained)."""
    num_examples: int | None = None
    """Held-out examples (default: the run's eval setting)."""


def eval_command(args: list[str]) -> int:
    a = tyro.cli(EvalArgs, args=args, prog="ntm eval")
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    steps = list(a.steps or exp.eval.steps or exp.process.steps)
    nll = heldout_nll(model, data, layout_for(exp, data), steps, batch_size=exp.eval.batch_size,
                      max_examples=a.num_examples or exp.eval.num_examples, seed=exp.eval.seed)
    (Path(a.run) / "eval.json").write_text(json.dumps({str(k): v for k, v in nll.items()}, indent=2) + "\n")
    for k, v in nll.items():
        print(f"K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} bpd ({v['examples']} examples)")
    return 0


@dataclasses.dataclass(frozen=True)
class BenchArgs:
    suite: tyro.conf.Positional[Literal["toy", "digits", "paper"]]
    """toy (2-D mixture, < 10 min on CPU), digits (< 45 min on CPU) or paper (GPU, imagenet-paper family)."""
    out: Path = Path("runs/bench")
    """Output directory (results.json, results.md, plots, figures, runs/)."""
    train_steps: int | None = None
    """Training steps per model (default: the suite's budget)."""
    num_samples: int | None = None
    """Samples per evaluation point (default: the suite's)."""
    seed: int = 0
    """Training seed shared by every model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train and sample."""
    tiny: bool = False
    """Shrink every network to a minimum (smoke tests)."""
    data_urls: str | None = None
    """Training shards for the paper suite (webdataset brace pattern)."""
    eval_urls: str | None = None
    """Held-out shards for the paper suite."""
    inception_weights: Path | None = None
    """Local Inception weights file for the paper suite's FID (nothing is downloaded)."""


def bench_command(args: list[str]) -> int:
    from eval.bench import SUITES, run_suite

    a = tyro.cli(BenchArgs, args=args, prog="ntm bench")
    kwargs = {"seed": a.seed, "tiny": a.tiny}
    if a.train_steps is not None:
        kwargs["train_steps"] = a.train_steps
    if a.num_samples is not None:
        kwargs["num_samples"] = a.num_samples
    started = time.monotonic()
    overrides = {k: v for k, v in (("urls", a.data_urls), ("eval_urls", a.eval_urls)) if v is not None}
    rows = run_suite(SUITES[a.suite](**kwargs), a.out, device=a.device, data_overrides=overrides,
                     inception_weights=a.inception_weights)
    print((a.out / "results.md").read_text())
    print(f"bench {a.suite}: {len(rows)} rows in {time.monotonic() - started:.0f}s -> {a.out}")
    return 0


def shards_command(args: list[str]) -> int:
    """``ntm shards write --folder F --out 'dir/train-%06d.tar'``: webdataset shards from an image folder."""
    from ntm.data.shards import main as shards_main

    return shards_main(args)


COMMANDS = {
    "train": train_command, "sample": sample_command, "eval": eval_command, "bench": bench_command,
    "shards": shards_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ntm: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    name = argv[0]
    try:
        return COMMANDS[name](argv[1:])
    except NonFiniteLossError as e:
        print(f"ntm {name}: error: {format_error(e)}", file=sys.stderr)
        return 3
    except (*USER_ERRORS, UsageError) as e:
        for line in format_error(e).splitlines():
            print(f"ntm {name}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
