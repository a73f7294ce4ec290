"""A training run from the command line's words: the experiment a preset or a saved config resolves to, trained,
then scored and sampled (held-out NLL, final samples, final.json) -- what ``ntm train`` and ``ntm finetune`` run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ntm.eval.nll import heldout_nll
from ntm.experiments.build import conditioner_of, data_for, layout_for, sample_picture, train_job
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.data.base import DataError
from ntm.denoisers.learned import DenoiserNotTrained
from ntm.train.checkpoint import (
    CheckpointManager,
)
from ntm.atomic import atomic_save_npy, atomic_write_text
from ntm.train.lock import RunLock
from ntm.train.loop import train
from ntm.viz import save_png
from ntm.registry import did_you_mean
from ntm.registry.cli import parse
from ntm.experiments.core import UsageError, pop_flag, pop_value, run_tyro
from ntm.experiments.runs import (
    load_experiment, nll_space,
)


def check_preset(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        if not args:
            raise UsageError(f"name a preset: {', '.join(PRESETS)} (or --config FILE)")
        return
    first = args[0]
    if not first.startswith("-") and ":" not in first and first not in PRESETS:
        raise UsageError(f"unknown preset {first!r}{did_you_mean(first, list(PRESETS))}; presets: {', '.join(PRESETS)}")


def _fresh_run_dir(run_dir: str) -> str:
    """``run_dir`` if it holds no checkpoints, else the first free ``run_dir-repro[-N]``."""
    candidates = [run_dir, f"{run_dir}-repro", *(f"{run_dir}-repro-{i}" for i in range(2, 1000))]
    for candidate in candidates:
        if not CheckpointManager(Path(candidate) / "checkpoints").present():
            return candidate
    raise UsageError(f"no free run directory next to {run_dir}; pass --run-dir")


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    experiment: Experiment
    resume: bool = False
    dry_run: bool = False
    note: str | None = None


def parse_experiment(args: list[str]) -> TrainRequest:
    """The resolved experiment and the run flags of ``ntm train`` arguments."""
    args = list(args)
    resume = pop_flag(args, "--resume")
    dry_run = pop_flag(args, "--dry-run")
    config_path = pop_value(args, "--config")
    description = ("Train an NTM. Extra flags: --config FILE (start from a saved config.json), --resume, "
                   "--dry-run (print the resolved config as JSON and exit).")
    if config_path is None:
        check_preset(args)
        exp = run_tyro(parse, Experiment, presets=PRESETS, prog="ntm train", argv=args, description=description)
        return TrainRequest(exp, resume, dry_run)
    base = load_experiment(config_path)
    exp = run_tyro(parse, Experiment, default=base, prog="ntm train --config FILE", argv=args, description=description)
    note = None
    if not resume and "--run-dir" not in " ".join(args):  # reproduce into a run directory of its own
        run_dir = _fresh_run_dir(exp.resolved_run_dir)
        exp = exp.replace(run_dir=run_dir)
        note = f"reproducing {config_path} into {run_dir}"
    return TrainRequest(exp, resume, dry_run, note)


def run_request(request: TrainRequest, command: str) -> int:
    """Train ``request.experiment`` (or print it for ``--dry-run``), then score and sample it: a run like any other."""
    exp = request.experiment
    if request.dry_run:
        print(json.dumps(exp.model_dump(mode="json"), indent=2))
        return 0
    if request.note:
        print(f"ntm {command}: {request.note}", flush=True)
    # one writer per run directory, from before the data is built until final.json is written (rank 0 holds it)
    lock = RunLock(exp.resolved_run_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    with lock or contextlib.nullcontext():
        data = data_for(exp)
        job = dataclasses.replace(train_job(exp, data, resume=request.resume), lock=lock)
        result = train(job)
        if result.ema_model is None:  # not rank 0 (the EMA model was gathered there)
            return 0
        try:  # a sharded EMA model (torchrun, FSDP): every rank scores and samples its rows; rank 0 writes
            _finish_run(exp, data, result, command)
        except BaseException:
            result.close(clean=False)
            raise
        result.close()
    return 0


def _finish_run(exp: Experiment, data, result, command: str) -> None:
    """Held-out NLL and the final samples of a trained run (on every rank of a sharded model); rank 0 writes
    final.json and samples/ and prints the summary."""
    main = result.ctx is None or result.ctx.is_main
    run_dir = Path(exp.resolved_run_dir)
    model = result.ema_model
    steps = list(exp.eval.steps or exp.model.process.steps)
    t0 = time.monotonic()
    try:
        nll = heldout_nll(model, data, layout_for(exp, data), steps, batch_size=exp.eval.batch_size,
                          max_examples=exp.eval.num_examples, seed=exp.eval.seed,
                          conditioner=conditioner_of(exp.conditioner))
    except DataError as e:
        if main:
            print(f"ntm {command}: note: no held-out NLL: {e}", file=sys.stderr)
        nll = {}
    try:
        image, samples, labels = sample_picture(exp, model, data, with_real=True)
    except DenoiserNotTrained as e:  # e.g. denoiser:learned, distilled after training
        if main:
            print(f"ntm {command}: note: final samples not denoised: {e}", file=sys.stderr)
        image, samples, labels = sample_picture(exp, model, data, denoise=False, with_real=True)
    if not main:
        return
    save_png(image, run_dir / "samples" / "final.png")
    atomic_save_npy(run_dir / "samples" / "final.npy", samples.numpy())
    if labels is not None:
        atomic_save_npy(run_dir / "samples" / "final_labels.npy", labels.numpy())
    headline = nll.get(max(steps), {})
    final = {
        **nll_space(data),
        "nll_traj_bpd": headline.get("nll_traj_bpd"),
        "bound_bpd": headline.get("bound_bpd"),
        "per_k": {str(k): v for k, v in nll.items()},
        "steps": result.steps,
        "wall_seconds": result.wall_seconds,
        "examples_per_second": result.examples_per_second,
        "eval_seconds": time.monotonic() - t0,
    }
    atomic_write_text(run_dir / "final.json", json.dumps(final, indent=2) + "\n")
    ran = result.steps - result.start_step
    resumed = f" (resumed at step {result.start_step}; {result.steps} in all)" if result.start_step else ""
    print(f"trained {exp.name}: {ran} steps in {result.wall_seconds:.1f}s{resumed} "
          f"({result.examples_per_second:.0f} examples/s)")
    per = "bits per latent dim" if data.spec.encoded_by else "bpd"
    for k, v in nll.items():
        print(f"held-out K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} {per} "
              f"({v['examples']} examples)")
    print(f"samples: {run_dir / 'samples' / 'final.png'}")
