"""Optimisation: the model's named parameter groups, AdamW over them, the learning-rate schedule.

:func:`param_group_names` reads the groups a model declares (by parameter name, so they survive wrapping),
:func:`make_optimizer` builds AdamW over the wrapped model's parameters found by those names and
:func:`make_scheduler` the warm-up + cosine schedule, per group with ``train.lr_scale`` /
``train.freeze_steps``. :func:`ntm.train.step.build_train_state` is their caller.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntm.train.config import TrainConfig
from ntm.train.errors import TrainingError

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


def logged_lrs(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
    """``lr``: the schedule's learning rate for the next step; with per-group schedules also ``lr/<group>``,
    each group's own (scaled; 0 while frozen)."""
    lrs = scheduler.get_last_lr()
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not isinstance(lambdas[0], GroupSchedule):
        return {"lr": lrs[0]}
    base = scheduler.base_lrs[0] * lambdas[0].unscaled(scheduler.last_epoch)
    names = [group.get("name", str(i)) for i, group in enumerate(scheduler.optimizer.param_groups)]
    return {"lr": base, **{f"lr/{name}": lr for name, lr in zip(names, lrs)}}


__all__ = [
    "ADAMW_IMPLEMENTATIONS", "WARMUP_START", "GroupSchedule", "check_group_settings", "logged_lrs", "lr_factor",
    "make_optimizer", "make_scheduler", "param_group_names",
]
