"""The training loop: one function, readable top to bottom.

:func:`train` builds the training state (:func:`ntm.train.step.build_train_state`), resumes it from the
newest checkpoint when asked, and runs :func:`ntm.train.step.train_step` once per step; around the step it
keeps the data stream, logging, previews, checkpoints and the stop on a non-finite loss. Every noise draw of
step ``i`` comes from generators keyed by ``(seed, i, chunk)`` where ``chunk`` indexes the global
micro-batch (``rank * grad_accum + micro``). So the loss curve does not depend on how the global batch is
split over ranks and micro-batches, and a resumed run continues the identical curve.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ntm.conditioning.base import Conditioner
from ntm.data.base import DataSource
from ntm.losses.base import Loss
from ntm.nn.tokens import TokenLayout
from ntm.train import distributed as D
from ntm.train.checkpoint import (
    CheckpointManager,
    check_config_matches,
    rng_state,
    set_rng_state,
)
from ntm.train.checkpoint.dcp import ShardedCheckpointer, load_training_state, training_state
from ntm.train.config import RESUMABLE_FIELDS, TrainConfig
from ntm.train.ema_models import EMAModels, full_ema_state, load_full_ema_state
from ntm.train.errors import NonFiniteLossError, TrainingError
from ntm.train.logging import Progress, RunLogger
from ntm.train.optim import logged_lrs
from ntm.train.step import build_train_state, train_step
from ntm.viz import save_png

CHECKPOINT_KEYS = ("format", "step", "model", "ema", "optimizer", "scheduler", "config")
FORMAT = "ntm-checkpoint-1"


@dataclasses.dataclass
class TrainJob:
    """Everything the loop needs, already built from an experiment config."""

    build_model: Callable[[], nn.Module]
    """Builds the model; called with the same seed on every rank so weights agree."""
    objective: Loss
    data: DataSource
    layout: TokenLayout
    conditioner: Conditioner | Callable[[Any, int, torch.Generator], Tensor | None]
    """Makes each micro-batch's condition input, with condition dropout
    (:meth:`~ntm.conditioning.base.Conditioner.condition`: it reads the batch field named by its ``reads``).
    A plain function ``(raw, num_classes, generator) -> input`` is handed the labels."""
    train: TrainConfig
    run_dir: Path
    config: dict[str, Any]
    """The experiment as JSON: saved in checkpoints and compared on resume."""
    resume: bool = False
    upgrade_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """A checkpoint's saved config read as today's (fields added to the config classes since it was written, at
    their defaults) before it is compared with ``config`` on resume; None: only the train fields added since
    earlier versions are filled in."""
    preview: Callable[[nn.Module, int], Tensor] | None = None
    """``(ema_model, step) -> image (C, H, W) in [0, 1]`` for the periodic sample grid."""
    initialize: Callable[[nn.Module], None] | None = None
    """Sets the freshly built model's weights in place (e.g. from a pretrained run). Called on a fresh start
    only, never when resuming (the checkpoint holds the weights then), on every rank, with the bare model right
    after ``build_model()``: before it moves to the device and is wrapped, and before the optimizer and the EMA
    are made, so the EMA starts from these weights. It must give the same weights on every rank; parameters it
    sets to ``requires_grad=False`` stay out of every parameter group and the optimizer."""
    sharded_sampling: bool = False
    """Under torchrun with FSDP: ``preview`` runs on every rank with an FSDP-sharded copy of the EMA weights (it
    must sample through :func:`ntm.train.distributed.run_sharded`, each rank its rows; rank 0's image is kept),
    and :attr:`TrainResult.ema_model` is that copy on every rank, the process group staying up until
    :meth:`TrainResult.close`. False: previews and the result use an unsharded copy gathered on rank 0."""


@dataclasses.dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    examples_per_second: float
    last_loss: float
    ema_model: nn.Module | None
    """A model holding the EMA weights: unsharded on rank 0 (``None`` elsewhere), or, with
    :attr:`TrainJob.sharded_sampling` under torchrun and FSDP, sharded on every rank (use it on all of them)."""
    ctx: D.DistContext | None = None
    """The process group's context while it is up (a sharded ``ema_model``); ``None`` once shut down."""

    def close(self, *, clean: bool = True) -> None:
        """Shut the process group down if training left it up (a sharded ``ema_model``); idempotent."""
        if self.ctx is not None:
            D.shutdown(self.ctx, clean=clean)
            self.ctx = None


def train(job: TrainJob) -> TrainResult:
    cfg = job.train
    ctx = D.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
        raise TrainingError(
            f"train.batch_size ({cfg.batch_size}) must be divisible by world size x grad_accum "
            f"({ctx.world_size} x {cfg.grad_accum})"
        )
    D.check_mesh(cfg.mesh, ctx.world_size)
    if ctx.is_main and cfg.mixed_precision != "none" and not (ctx.distributed and cfg.parallel == "fsdp"):
        print(f"ntm: note: train.mixed_precision {cfg.mixed_precision} applies to FSDP under torchrun; this run "
              "computes in float32", file=sys.stderr, flush=True)
    if ctx.is_main and isinstance(cfg.warmup_steps, int) and cfg.warmup_steps > cfg.steps:
        print(f"ntm: note: train.warmup_steps ({cfg.warmup_steps}) exceeds train.steps ({cfg.steps}); "
              f"using {cfg.warmup_count}", file=sys.stderr, flush=True)
    per_rank = cfg.batch_size // ctx.world_size
    run_dir = Path(job.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep=cfg.keep_checkpoints, format=cfg.checkpoint_format)
    existing = checkpoints.latest_path()
    if existing is not None and not job.resume:
        raise TrainingError(f"{run_dir} already holds checkpoints ({existing.name}); pass --resume or another run_dir")
    resuming = job.resume and existing is not None

    # -- build, initialise, wrap, optimise ----------------------------------------
    # (nothing is written before the model's parameter groups and the settings naming them check out)
    # train.meta_init: built on the meta device, sharded, then each rank draws its shards (D.materialize)
    trainer = build_train_state(cfg, job.build_model, objective=job.objective, conditioner=job.conditioner,
                                layout=job.layout, num_classes=job.data.spec.num_classes, ctx=ctx,
                                initialize=job.initialize, fresh=not resuming)
    model, inner, optimizer, scheduler, ema = (trainer.model, trainer.inner, trainer.optimizer, trainer.scheduler,
                                               trainer.ema)
    logger = RunLogger(run_dir, enabled=ctx.is_main)
    ema_models = EMAModels(job.build_model, cfg, ema, ctx, sharded_sampling=job.sharded_sampling)

    # -- resume -----------------------------------------------------------------
    # A file checkpoint (every rank reads it whole) or a directory (each rank reads what its shards need,
    # whatever world size wrote it; see ntm.train.checkpoint.dcp); the config is checked before any weight is read.
    start_step = 0
    sharded = None
    if cfg.checkpoint_format == "dcp":
        sharded = ShardedCheckpointer(checkpoints, ctx.rank, ctx.world_size, async_save=cfg.async_checkpoint,
                                      meta={"parallel": cfg.parallel, "config": job.config})
    if resuming:
        path, state = checkpoints.load_latest(required=CHECKPOINT_KEYS, parts=())
        saved = (job.upgrade_config or _with_added_train_defaults)(state["config"])
        check_config_matches(saved, job.config, ignore=RESUMABLE_FIELDS, path=path)
        if path.is_dir():
            start_step = load_training_state(path, inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size)
        else:
            D.load_full_state_dict(model, state["model"])
            D.load_optimizer_state(model, optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            load_full_ema_state(ema, state["ema"])
            if "rng" in state:
                set_rng_state(state["rng"])
            start_step = int(state["step"])
        del state
        trainer.step = start_step
        if ctx.is_main:
            print(f"resumed from {path} at step {start_step}", flush=True)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(job.config, indent=2) + "\n")
        (run_dir / "data_stats.json").write_text(json.dumps(job.data.stats(), indent=2) + "\n")

    def save(step: int, block: bool = False) -> Path | None:
        """Checkpoint ``step`` (collective); its path on rank 0 once written (an async save: with ``block``)."""
        if sharded is not None:
            return sharded.save(step, training_state(inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size, step),
                                block=block)
        state = {
            "format": FORMAT,
            "step": step,
            "model": D.full_state_dict(model),
            "ema": full_ema_state(ema),
            "optimizer": D.optimizer_state(model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "config": job.config,
        }
        path = checkpoints.save(step, state) if ctx.is_main else None
        ctx.barrier()
        return path

    # -- loop -------------------------------------------------------------------
    batches = job.data.train_batches(per_rank, seed=cfg.seed, start_step=start_step, rank=ctx.rank,
                                     world_size=ctx.world_size)
    progress = Progress(cfg.steps, initial=start_step, enabled=ctx.is_main, print_every=cfg.log_every)
    started = time.monotonic()
    window_start, window_examples = time.monotonic(), 0
    window_loss, window_count, last_loss = 0.0, 0, math.nan
    try:
        while trainer.step < cfg.steps:
            result = train_step(trainer, next(batches))
            if not result.finite:  # nothing was stepped: the state is the last good one
                path = save(result.step, block=True)
                raise NonFiniteLossError(
                    f"non-finite loss at step {result.step} (loss {result.loss}, grad norm {result.grad_norm.item()}); "
                    f"stopped, last good state saved to {path or checkpoints.path_for(result.step)}"
                )
            step, loss_value, grad_norm = trainer.step, result.loss, result.grad_norm
            last_loss = loss_value
            window_loss += loss_value
            window_count += 1
            window_examples += cfg.batch_size
            progress.update(1, loss=f"{loss_value:.4f}")

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.monotonic() - window_start
                scalars = {
                    "loss": window_loss / window_count,
                    "grad_norm": grad_norm.item(),
                    **logged_lrs(scheduler),
                    "examples_per_s": window_examples / max(elapsed, 1e-9),
                    **_metric_means(result.metrics, ctx),
                    "step_loss": loss_value,
                }
                logger.log_scalars(step, scalars)
                window_start, window_examples, window_loss, window_count = time.monotonic(), 0, 0.0, 0
            if cfg.sample_every and job.preview is not None and (step % cfg.sample_every == 0 or step == cfg.steps):
                _preview(job, ema_models, ctx, logger, step, run_dir)
            if sharded is not None:
                sharded.poll()  # commit a finished background save
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
        if sharded is not None:
            sharded.wait()
    except BaseException:
        D.shutdown(ctx, clean=False)
        raise
    finally:
        progress.close()
        logger.close()

    wall = time.monotonic() - started
    step = trainer.step
    done = step - start_step
    ema_model = ema_models.get()
    if not ema_models.sharded:
        D.shutdown(ctx)
    return TrainResult(
        steps=step,
        wall_seconds=wall,
        examples_per_second=done * cfg.batch_size / max(wall, 1e-9),
        last_loss=last_loss,
        ema_model=ema_model,
        ctx=ctx if ema_models.sharded else None,
    )


def _with_added_train_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the train fields added since earlier versions (``lr_scale``,
    ``freeze_steps``) at their defaults when absent: runs written before them resume."""
    train = saved.get("train")
    if not isinstance(train, dict):
        return saved
    added = {key: {} for key in ("lr_scale", "freeze_steps") if key not in train}
    return {**saved, "train": {**train, **added}} if added else saved


def _metric_means(metrics: dict[str, tuple[Tensor, int]], ctx: D.DistContext) -> dict[str, float]:
    """The last step's metrics as numbers, sorted by key: means over its micro-batches (one host sync for
    all keys); plain keys (every loss call emits them) are also averaged over ranks, '/' keys stay per rank."""
    keys = sorted(metrics)
    if not keys:
        return {}
    totals = torch.stack([metrics[k][0] for k in keys]).tolist()
    means = {k: total / metrics[k][1] for k, total in zip(keys, totals)}
    return {k: (mean if "/" in k else ctx.all_mean(mean)) for k, mean in means.items()}


def _preview(job: TrainJob, models: EMAModels, ctx: D.DistContext, logger: RunLogger, step: int,
             run_dir: Path) -> None:
    model = models.get()
    if model is not None:  # every rank when sharded (it samples its rows), else rank 0 alone
        image = job.preview(model, step).clamp(0, 1)
        if ctx.is_main:
            logger.log_image("samples", step, image)
            save_png(image, run_dir / "samples" / f"step_{step:08d}.png")
    ctx.barrier()


__all__ = ["CHECKPOINT_KEYS", "FORMAT", "TrainJob", "TrainResult", "train"]
