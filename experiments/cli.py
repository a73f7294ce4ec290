"""The ``ntm`` command: ``train``, ``sample``, ``eval``, ``export``, ``bench``, ``shards`` (tyro).

    ntm train digits-ntm                                   # a preset
    ntm train toy-ntm transporter:identity --predictor.depth 6
    ntm train digits-ntm predictor:transformer --dry-run   # print the resolved config, touch nothing
    ntm train --config runs/digits-ntm/config.json          # reproduce a run (into a new run directory)
    ntm train digits-ntm --resume                           # continue after a crash
    ntm finetune --from runs/digits-flow-matching           # an NTM started from a flow-matching teacher
    ntm sample --run runs/digits-ntm --guidance 1.5 --steps 4
    ntm eval --run runs/digits-ntm
    ntm export --run runs/digits-ntm                        # one file: the EMA weights and config, to share or sample
    ntm distill --run runs/digits-ntm && ntm sample --run runs/digits-ntm --denoiser learned   # one-pass denoiser
    ntm bench toy --out runs/bench-toy                      # baselines vs NTM, one table
    ntm bench latency --out runs/bench-latency              # time to one image vs a deep-shallow AR flow
    ntm bench loader --out runs/bench-loader                # data loader vs training step: data- or compute-bound
    ntm bench checkpoint --out runs/bench-checkpoint        # bytes and host memory per rank while saving (2 CPU ranks)
    ntm ablate toy --slot transporter=identity,tarflow --steps 1 2 4 --out runs/ablate   # a grid over variants
    ntm autoencoder train shapes-ae && ntm train shapes-latent-ntm   # an NTM in an autoencoder's latent space
    ntm shards write --folder images/ --out 'shards/train-%06d.tar'
    ntm shards write --source shapes --count 20000 --out 'shards/shapes-%06d.tar'   # captioned procedural scenes
    ntm train shapes-t2i-ntm && ntm sample --run runs/shapes-t2i-ntm --prompt "two red circles"   # text-to-image
    ntm eval --run runs/shapes-t2i-ntm --shapes-eval        # GenEval-style judge, seen / held-out combinations
    ntm --plugin my_pkg.my_module train toy-ntm transporter:shift   # a variant from your own module

Global options (before the command): --plugin MODULE (repeatable; also a .py
file path) imports your module first so its variants register; installed
packages do the same through the entry-point group ``ntm.plugins``.
--version prints the version.

User errors (bad config, bad data, wrong checkpoint, a plugin that does not
import) print one line per problem, ``ntm <command>: error: ...``, and exit
with status 2; a non-finite loss exits with status 3 and keeps the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pydantic
import torch
import tyro

from ntm.eval.nll import heldout_nll
from ntm.experiments.build import build_model, conditioner_of, data_for, layout_for, sample, sample_picture, train_job
from ntm.experiments.config import Experiment
from ntm.experiments.plugins import PluginError, load_plugins
from ntm.experiments.presets import PRESETS
from ntm.autoencoders import AutoencoderError
from ntm.data.base import DataError
from ntm.denoisers import DENOISERS, DenoiserConfig
from ntm.denoisers.learned import DenoiserNotTrained
from ntm.forward import ScheduleError
from ntm.train.checkpoint import (
    CheckpointError, CheckpointManager, check_config_matches, load_sampling_weights, read_sampling_state,
    sampling_state_dict, save_checkpoint,
)
from ntm.train import distributed as D
from ntm.train.config import RESUMABLE_FIELDS
from ntm.train.errors import NonFiniteLossError, TrainingError
from ntm.train.loop import train
from ntm.viz import captioned_rows, save_png
from ntm.registry import ConfigError, RegistryError, did_you_mean
from ntm.registry.cli import config_error, parse
from ntm.experiments.core import USER_ERRORS, UsageError, format_error, pop_flag, pop_value, run_tyro, version
from ntm.experiments.runs import (
    check_run_autoencoder, load_experiment, load_run, nll_space, sampler_for, shard_under_torchrun,
)
from ntm.experiments.commands import bench as bench_cmd, export as export_cmd


# -- train ----------------------------------------------------------------------
def _check_preset(args: list[str]) -> None:
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
        if CheckpointManager(Path(candidate) / "checkpoints").latest_path() is None:
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
        _check_preset(args)
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


def train_command(args: list[str]) -> int:
    return run_request(parse_experiment(args), "train")


def run_request(request: TrainRequest, command: str) -> int:
    """Train ``request.experiment`` (or print it for ``--dry-run``), then score and sample it: a run like any other."""
    exp = request.experiment
    if request.dry_run:
        print(json.dumps(exp.model_dump(mode="json"), indent=2))
        return 0
    if request.note:
        print(f"ntm {command}: {request.note}", flush=True)
    data = data_for(exp)
    job = train_job(exp, data, resume=request.resume)
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
    np.save(run_dir / "samples" / "final.npy", samples.numpy())
    if labels is not None:
        np.save(run_dir / "samples" / "final_labels.npy", labels.numpy())
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
    (run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    print(f"trained {exp.name}: {result.steps} steps in {result.wall_seconds:.1f}s "
          f"({result.examples_per_second:.0f} examples/s)")
    per = "bits per latent dim" if data.spec.encoded_by else "bpd"
    for k, v in nll.items():
        print(f"held-out K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} {per} "
              f"({v['examples']} examples)")
    print(f"samples: {run_dir / 'samples' / 'final.png'}")


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint: a file, a checkpoint directory, or an ntm export file (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: int | None = None
    """Number of steps K (sampler.num_steps; any K the schedule defines; default: the run's sampler setting)."""
    guidance: float | None = None
    """Classifier-free guidance weight (sampler.guidance; default: the run's sampler setting)."""
    temperature: float | None = None
    """Sampling temperature (sampler.temperature; default: the run's sampler setting)."""
    denoise: bool = True
    """Apply the run's denoiser to x_{t_0}."""
    denoiser: str | None = None
    """Denoiser to apply instead of the run's: a registered name (none, score, learned: the run's distilled one)."""
    seed: int | None = None
    """Sampling seed (default: the run's eval seed)."""
    out: Path | None = None
    """Output PNG (a .npy of the samples is written beside it); default: <run>/samples/sample.png."""
    dry_run: bool = False
    """Print the resolved sampler config as JSON and exit."""
    prompt: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """Captions to sample (caption-conditioned runs), one grid row each; repeatable: --prompt "two red circles"
    --prompt "a blue star". An empty prompt is the null condition (unconditional samples)."""
    prompts: Path | None = None
    """A text file of captions, one per line (blank lines skipped), sampled after any --prompt."""
    per_prompt: int | None = None
    """Samples per prompt (default: the run's eval.grid_columns)."""


def read_prompts(a: SampleArgs) -> list[str]:
    """The prompts of ``ntm sample``: every --prompt, then the lines of --prompts FILE."""
    prompts = list(a.prompt)
    if a.prompts is not None:
        if not a.prompts.is_file():
            raise FileNotFoundError(f"--prompts {a.prompts}: no such file")
        try:
            lines = a.prompts.read_text().splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--prompts {a.prompts}: not a UTF-8 text file") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise UsageError(f"--prompts {a.prompts}: the file holds no prompt")
    return prompts


def check_prompts(exp: Experiment) -> None:
    """``--prompt`` needs a run whose conditioner reads captions (one line otherwise)."""
    from ntm.conditioning import CONDITIONERS

    if getattr(exp.conditioner, "reads", "label") != "caption":
        raise UsageError(f"--prompt needs a caption-conditioned run; {exp.name} uses conditioner "
                         f"{CONDITIONERS.name_of(exp.conditioner)!r} (sample labelled runs without --prompt)")


def sample_command(args: list[str]) -> int:
    a = run_tyro(tyro.cli, SampleArgs, prog="ntm sample", argv=args)
    exp = load_experiment(Path(a.run) / "config.json")
    sampler = sampler_for(exp, num_steps=a.steps, guidance=a.guidance, temperature=a.temperature)
    if a.steps is not None:
        schedule = exp.model.process.schedule.build()
        if not schedule.supports(a.steps):
            raise UsageError(f"--steps {a.steps}: the schedule does not define K = {a.steps}")
    denoiser = exp.denoiser
    if a.denoiser is not None:  # the run's own config when it names the same variant, else that variant's defaults
        if not a.denoise:
            raise UsageError("--denoiser and --no-denoise exclude each other")
        entry = DENOISERS.get(a.denoiser)
        denoiser = exp.denoiser if type(exp.denoiser) is entry.config_cls else entry.config_cls()
    if isinstance(denoiser, DenoiserConfig):  # trained weights under --run, wherever the run directory moved
        denoiser = denoiser.for_run(Path(a.run))
    prompts = read_prompts(a)
    if prompts:
        check_prompts(exp)
    if a.per_prompt is not None and (a.per_prompt < 1 or not prompts):
        raise UsageError("--per-prompt needs --prompt/--prompts and a value >= 1")
    if a.dry_run:
        print(json.dumps(exp.replace(sampler=sampler).model_dump(mode="json")["sampler"], indent=2))
        return 0
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    ctx, model = shard_under_torchrun(exp, model)
    try:  # under torchrun every rank samples its rows of the batch; rank 0 writes
        if prompts:
            per = a.per_prompt or exp.eval.grid_columns
            captions = [p for p in prompts for _ in range(per)]
            samples = sample(exp, model, data, len(captions), captions=captions, sampler=sampler, denoise=a.denoise,
                             denoiser=denoiser, seed=a.seed)
            shown = data.to_display(samples).clamp(0, 1)
            upscale = max(1, 64 // shown.shape[-1])
            image = captioned_rows([(p, shown[i * per : (i + 1) * per]) for i, p in enumerate(prompts)],
                                   upscale=upscale)
        else:
            image, samples, labels = sample_picture(exp, model, data, sampler=sampler, denoise=a.denoise,
                                                    denoiser=denoiser, seed=a.seed, with_real=True)
    except BaseException:
        D.shutdown(ctx, clean=False)
        raise
    D.shutdown(ctx)
    if not ctx.is_main:
        return 0
    out = a.out or Path(a.run) / "samples" / ("prompts.png" if prompts else "sample.png")
    save_png(image, out)
    np.save(out.with_suffix(".npy"), samples.numpy())
    if prompts:
        out.with_suffix(".txt").write_text("".join(f"{c}\n" for c in captions))
    print(f"wrote {out} and {out.with_suffix('.npy')} ({samples.shape[0]} samples"
          + (f", {len(prompts)} prompts: {out.with_suffix('.txt')} holds each sample's caption)" if prompts else ")"))
    return 0


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint: a file, a checkpoint directory, or an ntm export file (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: tuple[int, ...] | None = None
    """Step counts K to score (default: every K trained)."""
    num_examples: int | None = None
    """Held-out examples (default: the run's eval setting)."""
    shapes_eval: bool = False
    """Also score text-to-image samples with the shapes-eval judge (runs on data:shapes): GenEval's six categories
    on captions of the held-out seen and unseen (held-out colour-shape pair) splits -> <run>/shapes_eval.json."""
    num_samples: int = 500
    """Samples per split for --shapes-eval."""
    classify: bool = False
    """Classify the held-out split by Bayes' rule with the run's likelihood (class-conditional runs): accuracy, ECE
    and log-loss, from the trajectory likelihood and from the importance-weighted x_{t_0} bound -> <run>/classify.json."""
    ood: bool = False
    """Out-of-distribution scores (NLL, typicality, likelihood ratio against the unconditional model) of the held-out
    images vs uniform noise, the images flipped and inverted, and grey shapes scenes: AUROC per pair ->
    <run>/ood.json."""
    trajectories: int = 4
    """Forward trajectories per image for --classify and --ood (their log-likelihoods are averaged)."""


def eval_command(args: list[str]) -> int:
    a = run_tyro(tyro.cli, EvalArgs, prog="ntm eval", argv=args)
    if a.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {a.num_samples}")
    if a.shapes_eval:
        run_exp = load_experiment(Path(a.run) / "config.json")
        if getattr(run_exp.conditioner, "reads", "label") != "caption" or type(run_exp.data).__name__ != "ShapesConfig":
            raise UsageError(f"--shapes-eval needs a caption-conditioned run on data:shapes; {run_exp.name} trains on "
                             f"{type(run_exp.data).__name__} with conditioner {type(run_exp.conditioner).__name__}")
    if a.trajectories < 1:
        raise UsageError(f"--trajectories must be >= 1, got {a.trajectories}")
    if a.classify:
        run_exp = load_experiment(Path(a.run) / "config.json")
        if not getattr(run_exp.conditioner, "model_dims", lambda n: {"num_classes": n})(10).get("num_classes"):
            raise UsageError(f"--classify needs a class-conditional run; {run_exp.name} is not conditioned on class "
                             f"labels (conditioner {type(run_exp.conditioner).__name__})")
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    if a.classify and model.dims.num_classes == 0:
        raise UsageError(f"--classify needs a class-conditional run; {exp.name}'s data has no class labels")
    steps = list(a.steps or exp.eval.steps or exp.model.process.steps)
    nll = heldout_nll(model, data, layout_for(exp, data), steps, batch_size=exp.eval.batch_size,
                      max_examples=a.num_examples or exp.eval.num_examples, seed=exp.eval.seed,
                      conditioner=conditioner_of(exp.conditioner))
    (Path(a.run) / "eval.json").write_text(json.dumps({str(k): v for k, v in nll.items()}, indent=2) + "\n")
    for k, v in nll.items():
        print(f"K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} bpd ({v['examples']} examples)")
    if a.classify or a.ood:
        from ntm.experiments.likelihood import classify_run, classify_table, ood_run, ood_table

        k = max(steps)
        if a.classify:
            result = classify_run(exp, data, model, num_steps=k, trajectories=a.trajectories,
                                  max_examples=a.num_examples or exp.eval.num_examples)
            (Path(a.run) / "classify.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"Bayes-rule classification, K={k}, {a.trajectories} trajectories per image, "
                  f"{result['traj']['examples']} held-out examples:\n{classify_table(result)}", end="")
        if a.ood:
            result = ood_run(exp, data, model, num_steps=k, trajectories=a.trajectories,
                             max_examples=a.num_examples or 500)
            (Path(a.run) / "ood.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"out-of-distribution AUROC (held-out vs each set), K={k}, {result['examples']} images per set; "
                  f"held-out mean NLL {result['nll_bpd']['heldout']:.3f} bits/dim:\n{ood_table(result)}", end="")
    if a.shapes_eval:
        from ntm.experiments.t2i import shapes_eval, shapes_eval_table

        result = shapes_eval(exp, model, data, num_samples=a.num_samples, seed=exp.eval.seed)
        (Path(a.run) / "shapes_eval.json").write_text(json.dumps(result, indent=2) + "\n")
        print(shapes_eval_table(result), end="")
        print(f"held-out combinations / seen: {result['unseen_vs_seen']}; "
              f"{result['wall_ms_per_sample']:.2f} ms/sample -> {Path(a.run) / 'shapes_eval.json'}")
    return 0


# -- shards -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShardsWrite:
    """Write webdataset tar shards from an image folder (flat, or one subfolder per class) or from a registered
    image source (--source shapes --count N): png, cls, txt caption and json annotation per sample. With
    --encode RUN, an autoencoder's latents instead (latent.npy per sample, the posterior mean at unit scale, with
    cls/txt/json), encoded once, and a latents.json sidecar written last beside the shards; a run reads them with
    data:latent-shards --data.urls ... and autoencoder:pretrained --autoencoder.path RUN."""

    out: str
    """Shard path pattern, e.g. 'shards/train-%06d.tar'."""
    folder: Path | None = None
    """Image folder; a .txt file beside an image is its caption (give this or --source)."""
    source: str | None = None
    """A registered image data source to write instead of a folder, e.g. 'shapes'."""
    count: int | None = None
    """Samples to write from --source (required with --split train; --split eval: default the whole split)."""
    split: Literal["train", "eval"] = "train"
    """Which examples of --source: its training stream (seeded by --seed) or its held-out split, in order."""
    source_options: tuple[str, ...] = ()
    """FIELD=VALUE settings of --source's config, e.g. image_size=64 train_size=50000 (values read as JSON
    where they parse, e.g. eval_split=unseen category_weights='{"counting": 1}')."""
    maxcount: int = 1000
    """Samples per shard."""
    seed: int = 0
    """Seed of the sample order across shards (a folder) or of the training stream (--source)."""
    sorted: bool = False
    """Keep the folder's sorted order instead of shuffling (folders only)."""
    encode: Path | None = None
    """An autoencoder run directory or its autoencoder.pt: write its latents instead of PNGs (a folder is read at
    the autoencoder's image size; images that do not fit it are refused before anything is written)."""


def _source_config(name: str, options: tuple[str, ...]) -> Any:
    """``--source NAME --source-options FIELD=VALUE ...`` -> the validated config of that data source."""
    from ntm.data import DATA_SOURCES

    fields: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise UsageError(f"--source-options takes FIELD=VALUE, got {option!r}")
        try:
            fields[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            fields[key.replace("-", "_")] = raw
    if name not in DATA_SOURCES.names():
        raise UsageError(f"--source: unknown data source {name!r}{did_you_mean(name, DATA_SOURCES.names())}; "
                         f"known: {', '.join(DATA_SOURCES.names())}")
    return DATA_SOURCES.get(name).config_cls.model_validate(fields)


def shards_command(args: list[str]) -> int:
    from ntm.data.shards import write_shards, write_source_shards

    a = run_tyro(tyro.extras.subcommand_cli_from_dict, {"write": ShardsWrite}, prog="ntm shards", argv=args)
    if (a.folder is None) == (a.source is None):
        raise UsageError("give exactly one of --folder (an image folder) and --source (a registered data source)")
    if a.folder is not None:
        stray = [flag for flag, value in (("--count", a.count), ("--source-options", a.source_options or None),
                                          ("--split", None if a.split == "train" else a.split)) if value is not None]
        if stray:
            raise UsageError(f"{', '.join(stray)} go{'es' if len(stray) == 1 else ''} with --source, not --folder")
    elif a.sorted:
        raise UsageError("--sorted goes with --folder; a source's examples come in its own order")
    elif a.count is None and a.split == "train":
        raise UsageError("--source needs --count N with --split train (a training stream is endless)")
    try:
        if a.encode is not None:  # latents: every check (weights, image size) before the first file is written
            from ntm.autoencoders import LatentSource
            from ntm.autoencoders.files import load_autoencoder, read
            from ntm.data.latent_shards import folder_images, write_latent_shards

            file, state = read(a.encode)
            if a.folder is not None:
                images = folder_images(a.folder, tuple(state["image_shape"]), seed=None if a.sorted else a.seed)
                where = {"folder": str(a.folder), "split": "all", "order": "sorted" if a.sorted else f"seed {a.seed}"}
            else:
                images = _source_config(a.source, a.source_options).build()
                where = {"source": a.source, "options": list(a.source_options), "seed": a.seed}
            autoencoder, _ = load_autoencoder(file)
            if not bool(autoencoder.stats_fitted):
                raise AutoencoderError(f"{file} has no fitted latent statistics, so no run could match its latents; "
                                       "fit them first (ntm autoencoder train does at the end)")
            if images.spec.kind == "images":
                autoencoder.latent_shape(tuple(images.spec.shape))  # images that do not fit: one line, here
                autoencoder, _ = load_autoencoder(file, tuple(images.spec.shape))  # as a run builds it
            summary = write_latent_shards(LatentSource(images, autoencoder), a.out, a.count, a.maxcount,
                                          split="eval" if a.folder is not None else a.split, seed=a.seed,
                                          autoencoder_path=str(file), origin=where)
        elif a.folder is not None:
            summary = write_shards(a.folder, a.out, a.maxcount, seed=None if a.sorted else a.seed)
        else:
            summary = write_source_shards(_source_config(a.source, a.source_options), a.out, a.count, a.maxcount,
                                          split=a.split, seed=a.seed)
    except pydantic.ValidationError:
        raise
    except AutoencoderError:
        raise
    except ValueError as e:
        raise DataError(str(e)) from None
    classes = f"{len(summary.class_names)} classes" if summary.class_names else "unconditional"
    origin = f" from {a.source} ({a.split})" if a.source else ""
    annotations = f", {summary.num_annotations} annotations" if summary.num_annotations else ""
    what = "samples" if a.encode is None else \
        f"latents {'x'.join(map(str, summary.latent_shape))} of autoencoder {summary.autoencoder}"
    print(f"wrote {summary.num_samples} {what}{origin} ({classes}, {summary.num_captions} captions{annotations}) "
          f"to {len(summary.shards)} shards: {summary.shards[0]} .. {summary.shards[-1]}")
    return 0


def finetune_command(args: list[str]) -> int:
    from ntm.experiments.finetune import finetune_command as run

    return run(args)


# -- entry point ----------------------------------------------------------------------
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_command, "finetune": finetune_command, "sample": sample_command, "eval": eval_command,
    "bench": bench_cmd.main, "shards": shards_command, "export": export_cmd.main,
    "distill": lambda a: __import__("experiments.distill", fromlist=["_"]).distill_command(a),
    "autoencoder": lambda a: __import__("experiments.autoencoder", fromlist=["_"]).autoencoder_command(a),
    "ablate": lambda a: __import__("experiments.ablate", fromlist=["_"]).ablate_command(a),
}


def _global_options(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """``(plugins, remaining argv, --version)`` from the options before the command."""
    plugins: list[str] = []
    i = 0
    show_version = False
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help"):
        if argv[i] == "--version":
            show_version = True
            i += 1
        elif argv[i] == "--plugin":
            if i + 1 >= len(argv):
                raise UsageError("--plugin needs a module name (or a .py file)")
            plugins.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--plugin="):
            plugins.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            raise UsageError(f"unknown option {argv[i]!r} before the command; global options: --plugin MODULE, --version")
    return plugins, argv[i:], show_version


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins, argv, show_version = _global_options(argv)
    except UsageError as e:
        print(f"ntm: error: {e}", file=sys.stderr)
        return 2
    if show_version:
        print(f"ntm {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"ntm: error: unknown command {name!r}{did_you_mean(name, list(COMMANDS))}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        load_plugins(plugins)
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
