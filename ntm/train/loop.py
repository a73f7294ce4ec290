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
import itertools
import json
import math
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ntm.atomic import atomic_write_text
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
from ntm.train.errors import CheckpointError, NonFiniteLossError, TrainingError
from ntm.train.lock import RunDirLocked, RunLock
from ntm.train.logging import Progress, RunLogger
from ntm.train.optim import logged_lrs
from ntm.train.signals import StopSignals, TrainingStopped, signal_name
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
    lock: RunLock | None = None
    """A :class:`~ntm.train.lock.RunLock` on ``run_dir`` the caller holds (e.g. past training, while it writes the
    final samples); ``None``: rank 0 locks ``run_dir`` for the duration of :func:`train`."""
    handle_signals: bool = True
    """SIGTERM / SIGINT stop the run with a checkpoint (:mod:`ntm.train.signals`); False: their default action."""


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
    start_step: int = 0
    """The step this call started from (a resumed run's checkpoint step): it ran ``steps - start_step``."""

    def close(self, *, clean: bool = True) -> None:
        """Shut the process group down if training left it up (a sharded ``ema_model``); idempotent."""
        if self.ctx is not None:
            D.shutdown(self.ctx, clean=clean)
            self.ctx = None


def train(job: TrainJob) -> TrainResult:
    """Train ``job`` (see the module docstring); the run directory is locked for the whole call (rank 0 holds
    :class:`~ntm.train.lock.RunLock` for every rank, unless ``job.lock`` is one the caller holds already).

    Nothing is lost on a stop: SIGTERM / SIGINT save a checkpoint at the next step boundary and raise
    :class:`~ntm.train.signals.TrainingStopped`; a non-finite loss or parameter raises
    :class:`~ntm.train.errors.NonFiniteLossError` keeping the last finite state; no checkpoint written is
    ever non-finite. A fresh start refuses a directory that holds checkpoints, and ``resume`` refuses one whose
    checkpoints all fail to load (one line naming each), rather than starting over on top of them.
    """
    cfg = job.train
    ctx = D.init(cfg.device)
    if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
        raise TrainingError(
            f"train.batch_size ({cfg.batch_size}) must be divisible by world size x grad_accum "
            f"({ctx.world_size} x {cfg.grad_accum})"
        )
    D.check_mesh(cfg.mesh, ctx.world_size)
    lock = job.lock
    own_lock = lock is None and ctx.is_main
    failure: TrainingError | None = None
    if own_lock:
        lock = RunLock(job.run_dir)
        try:
            lock.acquire()
        except RunDirLocked as e:
            failure = e
    if ctx.any(failure is not None):  # every rank stops when rank 0 could not lock
        D.shutdown(ctx, clean=False)
        raise failure or RunDirLocked(f"run directory {job.run_dir} is in use (rank 0 could not lock it)")
    try:
        return _train(job, ctx)
    finally:
        if own_lock and lock is not None:
            lock.release()


def _train(job: TrainJob, ctx: D.DistContext) -> TrainResult:
    cfg = job.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if ctx.is_main and cfg.mixed_precision != "none" and not (ctx.distributed and cfg.parallel == "fsdp"):
        print(f"ntm: note: train.mixed_precision {cfg.mixed_precision} applies to FSDP under torchrun; this run "
              "computes in float32", file=sys.stderr, flush=True)
    if ctx.is_main and isinstance(cfg.warmup_steps, int) and cfg.warmup_steps > cfg.steps:
        print(f"ntm: note: train.warmup_steps ({cfg.warmup_steps}) exceeds train.steps ({cfg.steps}); "
              f"using {cfg.warmup_count}", file=sys.stderr, flush=True)
    per_rank = cfg.batch_size // ctx.world_size
    run_dir = Path(job.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep=cfg.keep_checkpoints, format=cfg.checkpoint_format)
    present = checkpoints.present()
    if present and not job.resume:
        names = ", ".join(p.name for p in present[:3]) + (" ..." if len(present) > 3 else "")
        raise TrainingError(f"{run_dir} already holds checkpoints ({names}); pass --resume or another run_dir")
    resuming = job.resume and bool(present)

    # -- build, initialise, wrap, optimise ----------------------------------------
    # (nothing is written before the model's parameter groups and the settings naming them check out)
    # train.meta_init: built on the meta device, sharded, then each rank draws its shards (D.materialize)
    trainer = build_train_state(cfg, job.build_model, objective=job.objective, conditioner=job.conditioner,
                                layout=job.layout, num_classes=job.data.spec.num_classes, ctx=ctx,
                                initialize=job.initialize, fresh=not resuming)
    model, inner, optimizer, scheduler, ema = (trainer.model, trainer.inner, trainer.optimizer, trainer.scheduler,
                                               trainer.ema)
    ema_models = EMAModels(job.build_model, cfg, ema, ctx, sharded_sampling=job.sharded_sampling)

    # -- resume -----------------------------------------------------------------
    # A file checkpoint (every rank reads it whole) or a directory (each rank reads what its shards need,
    # whatever world size wrote it; see ntm.train.checkpoint.dcp); the config is checked before any weight is
    # read. The newest checkpoint that loads (checksums included) is used; if none does, the run refuses.
    start_step = 0
    window = _Window()
    sharded = None
    if cfg.checkpoint_format == "dcp":
        sharded = ShardedCheckpointer(checkpoints, ctx.rank, ctx.world_size, async_save=cfg.async_checkpoint,
                                      meta={"parallel": cfg.parallel, "config": job.config})
    if resuming:
        loaded = checkpoints.load_latest(required=CHECKPOINT_KEYS, parts=())
        if loaded is None:  # only incomplete entries (load_latest names them when there is one)
            raise CheckpointError(f"no checkpoint in {checkpoints.directory} loads; remove them or pass another "
                                  "run_dir to start over")
        path, state = loaded
        saved = (job.upgrade_config or _with_added_train_defaults)(state["config"])
        check_config_matches(saved, job.config, ignore=RESUMABLE_FIELDS, path=path)
        if path.is_dir():
            start_step = load_training_state(path, inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size,
                                             verify=False)
        else:
            D.load_full_state_dict(model, state["model"])
            D.load_optimizer_state(model, optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            load_full_ema_state(ema, state["ema"])
            if "rng" in state:
                set_rng_state(state["rng"])
            start_step = int(state["step"])
        window = _Window.restore(state.get("log_window"))
        del state
        trainer.step = start_step
        if ctx.is_main:
            print(f"resumed from {path} at step {start_step}", flush=True)

    logger = RunLogger(run_dir, enabled=ctx.is_main, start_step=start_step)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(job.config, indent=2) + "\n")
        atomic_write_text(run_dir / "data_stats.json", json.dumps(job.data.stats(), indent=2) + "\n")

    def finite_state() -> bool:
        """Whether the weights and the EMA are finite on every rank (collective)."""
        return D.all_finite(itertools.chain(inner.parameters(), ema.shadow.values()), ctx)

    def save(step: int, block: bool = False) -> Path | None:
        """Checkpoint ``step`` (collective); its path on rank 0 once written (an async save: with ``block``).
        A non-finite state is never written: that stops the run instead."""
        if not finite_state():
            raise NonFiniteLossError(f"non-finite weights at step {step}; not saved, stopped; "
                                     f"{_last_good(checkpoints)}")
        if sharded is not None:
            return sharded.save(step, training_state(inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size, step),
                                block=block, extra={"log_window": window.state()})
        state = {
            "format": FORMAT,
            "step": step,
            "model": D.full_state_dict(model),
            "ema": full_ema_state(ema),
            "optimizer": D.optimizer_state(model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "config": job.config,
            "log_window": window.state(),
        }
        path = checkpoints.save(step, state) if ctx.is_main else None
        ctx.barrier()
        return path

    # -- loop -------------------------------------------------------------------
    batches = job.data.train_batches(per_rank, seed=cfg.seed, start_step=start_step, rank=ctx.rank,
                                     world_size=ctx.world_size)
    progress = Progress(cfg.steps, initial=start_step, enabled=ctx.is_main, print_every=cfg.log_every)
    started = time.monotonic()
    window_start, window_examples, last_loss = time.monotonic(), 0, math.nan
    try:
        with StopSignals(enabled=job.handle_signals) as signals:
            while trainer.step < cfg.steps:
                result = train_step(trainer, next(batches))
                if not result.finite:  # nothing was stepped: the state is the last good one, if it is finite
                    path = save(result.step, block=True)
                    raise NonFiniteLossError(
                        f"non-finite loss at step {result.step} (loss {result.loss}, grad norm "
                        f"{result.grad_norm.item()}); stopped, last good state saved to "
                        f"{path or checkpoints.path_for(result.step)}"
                    )
                step, loss_value, grad_norm = trainer.step, result.loss, result.grad_norm
                last_loss = loss_value
                window.add(loss_value)
                window_examples += cfg.batch_size
                progress.update(1, loss=f"{loss_value:.4f}")

                if step % cfg.log_every == 0 or step == cfg.steps:
                    elapsed = time.monotonic() - window_start
                    scalars = {
                        "loss": window.mean(),
                        "grad_norm": grad_norm.item(),
                        **logged_lrs(scheduler),
                        "examples_per_s": window_examples / max(elapsed, 1e-9),
                        **_metric_means(result.metrics, ctx),
                        "step_loss": loss_value,
                    }
                    logger.log_scalars(step, scalars)
                    window_start, window_examples, window = time.monotonic(), 0, _Window()
                if cfg.sample_every and job.preview is not None and (step % cfg.sample_every == 0 or step == cfg.steps):
                    _preview(job, ema_models, ctx, logger, step, run_dir)
                if sharded is not None:
                    sharded.poll()  # commit a finished background save
                stop = ctx.any(signals.requested() is not None)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                    path = save(step, block=stop)
                if stop:
                    signum = signals.requested() or signal.SIGTERM
                    raise TrainingStopped(f"stopped by {signal_name(signum)} at step {step}; checkpoint saved to "
                                          f"{path or checkpoints.path_for(step)} (continue with --resume)", signum)
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
        start_step=start_step,
    )


@dataclasses.dataclass
class _Window:
    """The losses since the last log line: their mean is the logged ``loss``. Saved with each checkpoint, so a
    run resumed between two log lines logs the mean an uninterrupted run logs."""

    total: float = 0.0
    count: int = 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.count += 1

    def mean(self) -> float:
        return self.total / max(self.count, 1)

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count}

    @classmethod
    def restore(cls, state: Any) -> _Window:
        if isinstance(state, Mapping) and isinstance(state.get("count"), int):
            return cls(float(state.get("total", 0.0)), state["count"])
        return cls()


def _last_good(checkpoints: CheckpointManager) -> str:
    latest = checkpoints.latest_path()
    return f"the last finite checkpoint is {latest}" if latest is not None else "no checkpoint was written yet"


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
