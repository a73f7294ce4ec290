"""One training step, outside the loop: :class:`TrainState`, :func:`build_train_state` and :func:`train_step`.

The training loop (:func:`ntm.train.loop.train`) builds its state with :func:`build_train_state` and runs
:func:`train_step` once per step; around it the loop keeps what a run needs besides (the data stream,
resuming, logging, previews, checkpoints, stopping on a non-finite loss). A benchmark or a test builds the
same state the same way and gets the loop's step, bit for bit.

One step over the per-rank batch: the loss's schedule is told the step (``Loss.at_step``), then for each of
``train.grad_accum`` micro-batches the conditioner makes the condition (its dropout drawn from a CPU
generator) and ``model(x, cond, objective, generator)`` returns the loss, under bf16 autocast where the run
asks for it, backpropagated divided by ``grad_accum`` (gradients synchronised on the last micro-batch only);
then the gradients are clipped to ``train.grad_clip`` and, when the loss and the gradient norm are finite,
AdamW steps, the schedule steps and the EMA is updated.

Every noise draw of step ``i`` comes from generators keyed by ``(seed, i, chunk)`` (:func:`noise_generator`),
``chunk = rank * grad_accum + micro`` indexing the global micro-batch, so the step does not depend on how the
global batch is split over ranks and micro-batches, and a resumed run continues the identical loss curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ntm.conditioning.base import Conditioner, as_conditioner
from ntm.data.base import Batch
from ntm.losses.base import Loss
from ntm.train import distributed as D
from ntm.train.config import TrainConfig
from ntm.train.ema import EMA
from ntm.train.errors import TrainingError
from ntm.train.optim import check_group_settings, make_optimizer, make_scheduler, param_group_names


def noise_generator(device: torch.device, seed: int, step: int, chunk: int) -> torch.Generator:
    """The generator of micro-batch ``chunk``'s draws at ``step`` on ``device``, seeded from ``(seed, step, chunk)``."""
    key = (seed * 1_000_003 + step) * 10_007 + chunk
    return torch.Generator(device=device).manual_seed(key % (2**63 - 1))


@dataclasses.dataclass
class TrainState:
    """What :func:`train_step` reads and advances; :func:`build_train_state` makes it as the loop does."""

    model: nn.Module
    """What the step calls: the model as wrapped for training (DDP, FSDP2, ``torch.compile``) or as built."""
    inner: nn.Module
    """The module holding the parameters (``distributed.unwrap(model)``): clipped, optimised, averaged."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    objective: Loss | None
    """The loss ``model`` computes in its forward (``None``: a model with an objective of its own, e.g. an
    autoencoder); told each step first when it has ``at_step`` (a loss schedule)."""
    conditioner: Conditioner
    """Makes each micro-batch's condition input (:meth:`~ntm.conditioning.base.Conditioner.condition`)."""
    layout: Any
    """The token layout: ``to_tokens(x)`` turns a batch's ``x`` into what ``model`` reads."""
    num_classes: int
    """The data's number of classes (the null label), passed to the conditioner."""
    train: TrainConfig
    """Seed, total steps, ``grad_accum``, ``grad_clip``, ``precision`` and the rest of the run's settings."""
    ctx: D.DistContext
    """This process's rank, world size and device."""
    bf16: bool = False
    """Whether the forward and backward run under bf16 autocast (:func:`uses_bf16_autocast`)."""
    step: int = 0
    """The index (0-based) of the next step; :func:`train_step` advances it, resuming sets it."""

    def autocast(self) -> torch.autocast:
        """The autocast context of one micro-batch (disabled unless :attr:`bf16`)."""
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16)


@dataclasses.dataclass
class StepResult:
    """What one :func:`train_step` did."""

    step: int
    """The step's index (0-based)."""
    loss: float
    """The mean loss over the step's micro-batches, averaged over ranks."""
    grad_norm: Tensor
    """The gradients' total norm before clipping (a 0-dim tensor, gathered whole under FSDP)."""
    metrics: dict[str, tuple[Tensor, int]]
    """Per loss metric: its sum over the micro-batches (a float64 0-dim tensor on the device) and their count."""
    finite: bool
    """False: the loss or the gradient norm was not finite, and nothing was stepped (see :func:`train_step`)."""


def uses_bf16_autocast(train: TrainConfig, ctx: D.DistContext) -> bool:
    """bf16 autocast on CUDA with ``train.precision bf16``, and wherever FSDP gathers bf16 weights
    (``train.mixed_precision bf16`` under torchrun with ``train.parallel fsdp``)."""
    bf16_weights = train.mixed_precision == "bf16" and ctx.distributed and train.parallel == "fsdp"
    return (ctx.device.type == "cuda" and train.precision == "bf16") or bf16_weights


def build_train_state(
    train: TrainConfig,
    model: nn.Module | Callable[[], nn.Module],
    *,
    objective: Loss | None,
    conditioner: Conditioner | Callable[[Any, int, torch.Generator | None], Tensor | None],
    layout: Any,
    num_classes: int,
    ctx: D.DistContext | None = None,
    device: torch.device | str | None = None,
    initialize: Callable[[nn.Module], None] | None = None,
    fresh: bool = True,
) -> TrainState:
    """The training state the loop builds: the model built, initialised, wrapped, with AdamW, its schedule
    and the EMA; at step 0.

    ``model``: a function building it (called after ``torch.manual_seed(train.seed)``, on the meta device with
    ``train.meta_init``, as the loop calls ``TrainJob.build_model``) or a model already built. ``initialize``
    sets its weights on a ``fresh`` start, before anything else sees them (``TrainJob.initialize``);
    ``fresh=False`` (resuming) skips it and gives a meta-initialised model storage only, for the checkpoint's
    weights. Then, as in the loop: the parameter groups are checked against ``train.lr_scale`` /
    ``train.freeze_steps``, activations checkpointed, the model moved to the device and wrapped for
    ``train.parallel`` (under torchrun), AdamW and the schedule made over the groups, the EMA started from
    the weights, and the model compiled with ``train.compile``.

    ``ctx``: the process group's context (:func:`ntm.train.distributed.init`); without one, a single process
    on ``device`` (default: ``train.device`` resolved). A plain function as ``conditioner`` reads the batch's
    labels (:func:`~ntm.conditioning.base.as_conditioner`).
    """
    if ctx is None:
        ctx = D.DistContext(device=torch.device(device) if device is not None else D.resolve_device(train.device))
    if train.meta_init and initialize is not None and fresh:
        raise TrainingError("train.meta_init cannot start from another run's weights (init); start this run "
                            "without train.meta_init")
    if not isinstance(model, nn.Module):
        torch.manual_seed(train.seed)
        with torch.device("meta") if train.meta_init else contextlib.nullcontext():
            model = model()
    if initialize is not None and fresh:
        initialize(model)
    groups = param_group_names(model)
    check_group_settings(train, groups)
    D.checkpoint_activations(model, train.activation_checkpointing)
    model = D.wrap(model, ctx, train.parallel, mesh=D.device_mesh(ctx, train.mesh),
                   mixed_precision=train.mixed_precision, reshard_after_forward=train.reshard_after_forward,
                   seed=train.seed if train.meta_init and fresh else None)
    inner = D.unwrap(model)
    optimizer = make_optimizer(inner, groups, train)
    scheduler = make_scheduler(optimizer, train)
    ema = EMA(inner, decay=train.ema_decay, warmup=True)
    if train.compile:
        model = torch.compile(model)
    return TrainState(model=model, inner=inner, optimizer=optimizer, scheduler=scheduler, ema=ema,
                      objective=objective, conditioner=as_conditioner(conditioner), layout=layout,
                      num_classes=num_classes, train=train, ctx=ctx, bf16=uses_bf16_autocast(train, ctx))


def train_step(state: TrainState, batch: Batch) -> StepResult:
    """One optimisation step of ``state`` on this rank's ``batch`` (its ``train.grad_accum`` micro-batches).

    Returns the step's loss, gradient norm and metrics; afterwards ``state.step`` is the next step's index.
    When the loss or the gradient norm is not finite, the gradients are dropped and nothing else changes (the
    weights, AdamW, the schedule, the EMA and ``state.step`` are the last good ones): the result says
    ``finite=False`` and the caller decides (the loop saves that state and stops). Collective under torchrun
    (every rank calls it at the same step).
    """
    cfg, ctx, step = state.train, state.ctx, state.step
    accum = cfg.grad_accum
    rows = batch.x.shape[0]
    if rows % accum:
        raise TrainingError(f"a batch of {rows} examples does not split into train.grad_accum = {accum} micro-batches")
    micro = rows // accum
    x_all = state.layout.to_tokens(batch.x.to(ctx.device, non_blocking=True))
    state.model.train()
    step_loss = torch.zeros((), device=ctx.device)
    if hasattr(state.objective, "at_step"):  # losses with a schedule (e.g. an annealed weight)
        state.objective.at_step(step, cfg.steps)
    metrics: dict[str, tuple[Tensor, int]] = {}  # sums over micro-batches (float64, on the device) and counts
    for m in range(accum):
        chunk = ctx.rank * accum + m
        sl = slice(m * micro, (m + 1) * micro)
        cond = state.conditioner.condition(batch.rows(sl), state.num_classes,
                                           noise_generator(torch.device("cpu"), cfg.seed, step, chunk))
        cond = None if cond is None else cond.to(ctx.device)
        gen = noise_generator(ctx.device, cfg.seed, step, chunk)
        with D.gradient_sync(state.model, enabled=m == accum - 1), state.autocast():
            loss, micro_metrics = state.model(x_all[sl], cond, state.objective, gen)
            (loss / accum).backward()
        step_loss += loss.detach() / accum
        for key, value in micro_metrics.items():
            total, count = metrics.get(key, (0.0, 0))
            metrics[key] = (total + _metric_tensor(value, ctx.device), count + 1)
    grad_norm = D.full_tensor(torch.nn.utils.clip_grad_norm_(state.inner.parameters(), cfg.grad_clip or math.inf))
    # the finite check comes before the optimizer step: the weights are still the last good ones
    loss_value = ctx.all_mean(step_loss.item())
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
        state.optimizer.zero_grad(set_to_none=True)
        return StepResult(step, loss_value, grad_norm, metrics, finite=False)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(state.inner, decay=state.ema.decay_at(state.ema.num_updates))
    state.step = step + 1
    return StepResult(step, loss_value, grad_norm, metrics, finite=True)


def _metric_tensor(value: float | Tensor, device: torch.device) -> Tensor:
    """A loss metric as a detached float64 0-dim tensor on ``device`` (no host sync)."""
    return torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64, device=device)


__all__ = ["StepResult", "TrainState", "build_train_state", "noise_generator", "train_step", "uses_bf16_autocast"]
