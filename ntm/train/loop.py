"""The training loop: one function, readable top to bottom.

Every noise draw of step ``i`` comes from generators keyed by
``(seed, i, chunk)`` where ``chunk`` indexes the global micro-batch
(``rank * grad_accum + micro``). So the loss curve does not depend on how the
global batch is split over ranks and micro-batches, and a resumed run
continues the identical curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ntm.data.base import DataSource
from ntm.losses.base import Loss
from ntm.nn.tokens import TokenLayout
from ntm.train import distributed as D
from ntm.train.checkpoint import (
    CheckpointManager,
    check_config_matches,
    rng_state,
    sampling_state_dict,
    set_rng_state,
)
from ntm.train.config import RESUMABLE_FIELDS, TrainConfig
from ntm.train.dcp import ShardedCheckpointer, load_training_state, training_state
from ntm.train.ema import EMA
from ntm.train.errors import NonFiniteLossError, TrainingError
from ntm.train.logging import Progress, RunLogger
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
    conditioner: Callable[[Any, int, torch.Generator], Tensor | None]
    """The batch's raw condition -> the model's condition input (with condition dropout). It reads the batch
    field named by its ``reads`` attribute (``"label"`` or ``"caption"``; ``"label"`` when it has none)."""
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


def noise_generator(device: torch.device, seed: int, step: int, chunk: int) -> torch.Generator:
    key = (seed * 1_000_003 + step) * 10_007 + chunk
    return torch.Generator(device=device).manual_seed(key % (2**63 - 1))


WARMUP_START = 1e-3
"""The warm-up's first learning rate, as a fraction of the peak."""


def lr_factor(step: int, warmup: int, horizon: int, min_lr_ratio: float) -> float:
    """The schedule as a multiple of the peak learning rate at ``step`` (0-based): linear from
    ``WARMUP_START`` over ``warmup`` steps, then a cosine over ``horizon`` steps down to ``min_lr_ratio``
    (the closed form of the chained schedulers of :func:`make_scheduler`; past the horizon it rises
    again, as ``CosineAnnealingLR`` does)."""
    if step < warmup:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warmup
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * (step - warmup) / horizon)) / 2.0


class GroupSchedule:
    """One parameter group's learning-rate multiplier at a step (a ``LambdaLR`` lambda): 0 during the
    group's first ``freeze`` steps, else ``scale`` times :func:`lr_factor`. A group leaving its freeze
    takes the schedule's value at that step (the warm-up does not restart).

    Its attributes are plain numbers, which ``LambdaLR`` saves in its state dict and restores on resume:
    a resumed run keeps the horizon it started with, as the default scheduler keeps its ``T_max``.
    """

    def __init__(self, cfg: TrainConfig, scale: float = 1.0, freeze: int = 0) -> None:
        self.warmup = cfg.warmup_count
        self.horizon = max(cfg.steps - self.warmup, 1)
        self.min_lr_ratio = cfg.min_lr_ratio
        self.scale = float(scale)
        self.freeze = int(freeze)

    def unscaled(self, step: int) -> float:
        """The multiplier of an unscaled, unfrozen group."""
        return lr_factor(step, self.warmup, self.horizon, self.min_lr_ratio)

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.freeze else self.scale * self.unscaled(step)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``cfg.warmup_count`` steps, then cosine decay to ``min_lr_ratio * lr``.

    With ``cfg.lr_scale`` or ``cfg.freeze_steps`` set, a ``LambdaLR`` with one :class:`GroupSchedule` per
    optimizer param group, matched by the group's ``"name"`` key: the same schedule times the group's
    scale, 0 during its freeze steps. Otherwise the chained ``LinearLR``/``CosineAnnealingLR`` of earlier
    versions (their loss curves and checkpoints stay bit-identical).
    """
    if cfg.lr_scale or cfg.freeze_steps:
        names = [group.get("name") for group in optimizer.param_groups]
        lambdas = [GroupSchedule(cfg, cfg.lr_scale.get(n, 1.0), cfg.freeze_steps.get(n, 0)) for n in names]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    warmup_steps = cfg.warmup_count
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(cfg.steps - warmup_steps, 1), eta_min=cfg.lr * cfg.min_lr_ratio
    )
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def _some(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def param_group_names(model: nn.Module) -> dict[str, list[str]]:
    """The model's named parameter groups, each as the names ``model.named_parameters()`` gives its parameters.

    The groups are ``model.param_groups()`` (e.g. :meth:`ntm.model.NTM.param_groups`); a model without
    that method is one group ``"all"``. Names, not tensors, so that the groups survive wrapping (FSDP2
    replaces the parameters by DTensors under the same names). Raises :class:`TrainingError` unless the
    groups partition the trainable parameters: each in exactly one group, none frozen
    (``requires_grad=False``) or foreign. Empty groups are kept (their names are valid settings).
    """
    named = list(model.named_parameters())
    name_of = {id(p): n for n, p in named}
    declare = getattr(model, "param_groups", None)
    groups = declare() if declare is not None else {"all": [p for _, p in named if p.requires_grad]}
    where = f"{type(model).__name__}.param_groups()"
    owner: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for group, params in groups.items():
        out[group] = []
        for p in params:
            name = name_of.get(id(p))
            if name is None:
                raise TrainingError(f"{where}: group {group!r} holds a parameter that is not the model's")
            if not p.requires_grad:
                raise TrainingError(f"{where}: group {group!r} holds the frozen parameter {name}")
            if name in owner:
                raise TrainingError(f"{where}: parameter {name} is in group {owner[name]!r} and in group {group!r}")
            owner[name] = group
            out[group].append(name)
    missing = [n for n, p in named if p.requires_grad and n not in owner]
    if missing:
        raise TrainingError(f"{where}: trainable parameters in no group: {_some(missing)}")
    return out


def check_group_settings(cfg: TrainConfig, groups: dict[str, list[str]]) -> None:
    """One-line :class:`TrainingError` if ``train.lr_scale`` or ``train.freeze_steps`` names a group the model lacks."""
    problems = []
    for field in ("lr_scale", "freeze_steps"):
        unknown = [name for name in getattr(cfg, field) if name not in groups]
        if unknown:
            problems.append(f"train.{field} names unknown parameter group{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}")
    if problems:
        raise TrainingError(f"{'; '.join(problems)}; the model's groups: {', '.join(groups)}")


def make_optimizer(model: nn.Module, groups: dict[str, list[str]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters found by name: pass the wrapped (possibly sharded) module.

    With ``cfg.lr_scale`` or ``cfg.freeze_steps`` set, one param group per non-empty named group (its
    ``"name"`` key holds the group's name, for :func:`make_scheduler`); otherwise one group ``"all"`` of
    every trainable parameter in the model's order, as in earlier versions (their checkpoints resume).
    """
    params = dict(model.named_parameters())
    absent = [n for names in groups.values() for n in names if n not in params]
    if absent:
        raise TrainingError(f"parameters of the model's groups are missing after wrapping: {_some(absent)}")
    if cfg.lr_scale or cfg.freeze_steps:
        param_groups = [{"params": [params[n] for n in names], "name": g} for g, names in groups.items() if names]
    else:
        grouped = {n for names in groups.values() for n in names}
        param_groups = [{"params": [p for n, p in params.items() if n in grouped], "name": "all"}]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             **ADAMW_IMPLEMENTATIONS[cfg.adamw])


ADAMW_IMPLEMENTATIONS: dict[str, dict[str, bool]] = {
    "auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
}
"""``train.adamw`` -> the ``torch.optim.AdamW`` keywords choosing its implementation ('auto': torch's default)."""


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
    micro = per_rank // cfg.grad_accum
    run_dir = Path(job.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep=cfg.keep_checkpoints, format=cfg.checkpoint_format)
    existing = checkpoints.latest_path()
    if existing is not None and not job.resume:
        raise TrainingError(f"{run_dir} already holds checkpoints ({existing.name}); pass --resume or another run_dir")
    resuming = job.resume and existing is not None

    # -- build, initialise, wrap, optimise ----------------------------------------
    # (nothing is written before the model's parameter groups and the settings naming them check out)
    # train.meta_init: built on the meta device, sharded, then each rank draws its shards (D.materialize)
    if cfg.meta_init and job.initialize is not None and not resuming:
        raise TrainingError("train.meta_init cannot start from another run's weights (init); start this run "
                            "without train.meta_init")
    torch.manual_seed(cfg.seed)
    with torch.device("meta") if cfg.meta_init else contextlib.nullcontext():
        model = job.build_model()
    if job.initialize is not None and not resuming:
        job.initialize(model)
    groups = param_group_names(model)
    check_group_settings(cfg, groups)
    D.checkpoint_activations(model, cfg.activation_checkpointing)
    model = D.wrap(model, ctx, cfg.parallel, mesh=D.device_mesh(ctx, cfg.mesh), mixed_precision=cfg.mixed_precision,
                   reshard_after_forward=cfg.reshard_after_forward,
                   seed=cfg.seed if cfg.meta_init and not resuming else None)
    inner = D.unwrap(model)
    optimizer = make_optimizer(inner, groups, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    ema = EMA(inner, decay=cfg.ema_decay, warmup=True)
    if cfg.compile:
        model = torch.compile(model)
    logger = RunLogger(run_dir, enabled=ctx.is_main)
    ema_models = _EMAModels(job, ema, ctx)

    # -- resume -----------------------------------------------------------------
    # A file checkpoint (every rank reads it whole) or a directory (each rank reads what its shards need,
    # whatever world size wrote it; see ntm.train.dcp); the config is checked before any weight is read.
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
            _load_ema(ema, state["ema"])
            if "rng" in state:
                set_rng_state(state["rng"])
            start_step = int(state["step"])
        del state
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
            "ema": _full_ema_state(ema),
            "optimizer": D.optimizer_state(model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "config": job.config,
        }
        path = checkpoints.save(step, state) if ctx.is_main else None
        ctx.barrier()
        return path

    # -- loop -------------------------------------------------------------------
    # bf16 autocast: on CUDA with train.precision bf16, and wherever FSDP gathers bf16 weights (train.mixed_precision)
    bf16_weights = cfg.mixed_precision == "bf16" and ctx.distributed and cfg.parallel == "fsdp"
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                              enabled=(ctx.device.type == "cuda" and cfg.precision == "bf16") or bf16_weights)
    batches = job.data.train_batches(per_rank, seed=cfg.seed, start_step=start_step, rank=ctx.rank, world_size=ctx.world_size)
    num_classes = job.data.spec.num_classes
    condition_field = getattr(job.conditioner, "reads", "label")
    progress = Progress(cfg.steps, initial=start_step, enabled=ctx.is_main, print_every=cfg.log_every)
    started = time.monotonic()
    window_start, window_examples = time.monotonic(), 0
    window_loss, window_count, last_loss = 0.0, 0, math.nan
    metrics: dict[str, tuple[Tensor, int]] = {}
    step = start_step
    try:
        while step < cfg.steps:
            batch = next(batches)
            x_all = job.layout.to_tokens(batch.x.to(ctx.device, non_blocking=True))
            raw_all = getattr(batch, condition_field)  # labels (B,) or captions [B strings] or None
            raw_all = raw_all.to(ctx.device) if isinstance(raw_all, Tensor) else raw_all
            model.train()
            step_loss = torch.zeros((), device=ctx.device)
            if hasattr(job.objective, "at_step"):  # losses with a schedule (e.g. an annealed weight)
                job.objective.at_step(step, cfg.steps)
            metrics = {}  # this step's sums over micro-batches (float64, on the device) and counts
            for m in range(cfg.grad_accum):
                chunk = ctx.rank * cfg.grad_accum + m
                sl = slice(m * micro, (m + 1) * micro)
                cpu_gen = noise_generator(torch.device("cpu"), cfg.seed, step, chunk)
                raw = None if raw_all is None else raw_all[sl]
                cond = job.conditioner(raw.cpu() if isinstance(raw, Tensor) else raw, num_classes, cpu_gen)
                cond = None if cond is None else cond.to(ctx.device)
                gen = noise_generator(ctx.device, cfg.seed, step, chunk)
                with D.gradient_sync(model, enabled=m == cfg.grad_accum - 1), autocast:
                    loss, micro_metrics = model(x_all[sl], cond, job.objective, gen)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
                for key, value in micro_metrics.items():
                    total, count = metrics.get(key, (0.0, 0))
                    metrics[key] = (total + _metric_tensor(value, ctx.device), count + 1)
            grad_norm = torch.nn.utils.clip_grad_norm_(inner.parameters(), cfg.grad_clip or math.inf)
            grad_norm = D.full_tensor(grad_norm)
            # Non-finite check before the optimizer step: the weights are still the last good ones.
            loss_value = ctx.all_mean(step_loss.item())
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
                optimizer.zero_grad(set_to_none=True)
                path = save(step, block=True)
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (loss {loss_value}, grad norm {grad_norm.item()}); "
                    f"stopped, last good state saved to {path or checkpoints.path_for(step)}"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(inner, decay=ema.decay_at(ema.num_updates))
            step += 1
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
                    **_logged_lrs(scheduler),
                    "examples_per_s": window_examples / max(elapsed, 1e-9),
                    **_metric_means(metrics, ctx),
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


def _logged_lrs(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
    """``lr``: the schedule's learning rate for the next step; with per-group schedules also ``lr/<group>``,
    each group's own (scaled; 0 while frozen)."""
    lrs = scheduler.get_last_lr()
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not isinstance(lambdas[0], GroupSchedule):
        return {"lr": lrs[0]}
    base = scheduler.base_lrs[0] * lambdas[0].unscaled(scheduler.last_epoch)
    names = [group.get("name", str(i)) for i, group in enumerate(scheduler.optimizer.param_groups)]
    return {"lr": base, **{f"lr/{name}": lr for name, lr in zip(names, lrs)}}


def _with_added_train_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the train fields added since earlier versions (``lr_scale``,
    ``freeze_steps``) at their defaults when absent: runs written before them resume."""
    train = saved.get("train")
    if not isinstance(train, dict):
        return saved
    added = {key: {} for key in ("lr_scale", "freeze_steps") if key not in train}
    return {**saved, "train": {**train, **added}} if added else saved


def _metric_tensor(value: float | Tensor, device: torch.device) -> Tensor:
    """A loss metric as a detached float64 0-dim tensor on ``device`` (no host sync)."""
    return torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64, device=device)


def _metric_means(metrics: dict[str, tuple[Tensor, int]], ctx: D.DistContext) -> dict[str, float]:
    """The last step's metrics as numbers, sorted by key: means over its micro-batches (one host sync for
    all keys); plain keys (every loss call emits them) are also averaged over ranks, '/' keys stay per rank."""
    keys = sorted(metrics)
    if not keys:
        return {}
    totals = torch.stack([metrics[k][0] for k in keys]).tolist()
    means = {k: total / metrics[k][1] for k, total in zip(keys, totals)}
    return {k: (mean if "/" in k else ctx.all_mean(mean)) for k, mean in means.items()}


def _full_ema_state(ema: EMA) -> dict[str, Any]:
    """The EMA's state with full CPU tensors on rank 0 (one tensor gathered at a time; collective under FSDP).
    Other ranks take part in the gathers and keep nothing: their shadow and buffers come back empty."""
    keep = not dist.is_initialized() or dist.get_rank() == 0
    state = ema.state_dict()
    for key in ("shadow", "buffers"):
        out = {}
        for name, value in state[key].items():
            full = D.full_tensor(value).detach()
            if keep:
                out[name] = full.cpu()
            del full
        state[key] = out
    return state


def _load_ema(ema: EMA, state: dict[str, Any]) -> None:
    state = dict(state)
    state["shadow"] = {k: D.shard_like(v, ema.shadow[k]) for k, v in state["shadow"].items()}
    ema.load_state_dict(state)


def _ema_model(job: TrainJob, ema: EMA, ctx: D.DistContext) -> nn.Module | None:
    """An unsharded model holding the EMA weights, on rank 0 (gathering is collective)."""
    full = _full_ema_state(ema)
    if not ctx.is_main:
        return None
    model = job.build_model().to(ctx.device)
    model.load_state_dict(sampling_state_dict({"ema": full}))
    return model.eval()


class _EMAModels:
    """The model previews and the result sample with: the EMA weights in a model of their own.

    Sharded (:attr:`TrainJob.sharded_sampling` under torchrun with FSDP): one FSDP-sharded copy built like the
    training model (on the meta device with ``train.meta_init``; the same mesh), float32 whatever
    ``train.mixed_precision`` (samples as from the gathered copy), every unit resharded after its forward,
    frozen; made on first use; each :meth:`get` copies the EMA's shards into it,
    rank by rank, with no communication. Otherwise :func:`_ema_model` (gathered on rank 0).
    """

    def __init__(self, job: TrainJob, ema: EMA, ctx: D.DistContext) -> None:
        self.job, self.ema, self.ctx = job, ema, ctx
        self.sharded = job.sharded_sampling and ctx.distributed and job.train.parallel == "fsdp"
        self._copy: nn.Module | None = None

    def get(self) -> nn.Module | None:
        if not self.sharded:
            return _ema_model(self.job, self.ema, self.ctx)
        if self._copy is None:
            cfg = self.job.train
            with torch.random.fork_rng(devices=[]):  # a meta copy draws (then discards) initial weights
                with torch.device("meta") if cfg.meta_init else contextlib.nullcontext():
                    model = self.job.build_model()
                model.requires_grad_(False)
                model = D.wrap(model, self.ctx, "fsdp", mesh=D.device_mesh(self.ctx, cfg.mesh),
                               reshard_after_forward=True, seed=cfg.seed if cfg.meta_init else None)
            self._copy = D.enable_sharded_calls(model)
        D.copy_shards(self._copy, self.ema.shadow, self.ema.buffers)
        return self._copy.eval()


def _preview(job: TrainJob, models: _EMAModels, ctx: D.DistContext, logger: RunLogger, step: int,
             run_dir: Path) -> None:
    model = models.get()
    if model is not None:  # every rank when sharded (it samples its rows), else rank 0 alone
        image = job.preview(model, step).clamp(0, 1)
        if ctx.is_main:
            logger.log_image("samples", step, image)
            save_png(image, run_dir / "samples" / f"step_{step:08d}.png")
    ctx.barrier()
