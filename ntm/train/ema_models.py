"""The EMA outside training: its state gathered for a checkpoint file, and models holding its weights.

:func:`full_ema_state` and :func:`load_full_ema_state` carry the EMA through the single-file checkpoint format
(full tensors on rank 0, sharded back on load); :class:`EMAModels` gives the loop the model its previews and
its result sample with (gathered on rank 0, or an FSDP-sharded copy on every rank).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ntm.train import distributed as D
from ntm.train.checkpoint import sampling_state_dict
from ntm.train.config import TrainConfig
from ntm.train.ema import EMA


def full_ema_state(ema: EMA) -> dict[str, Any]:
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


def load_full_ema_state(ema: EMA, state: dict[str, Any]) -> None:
    """Load what :func:`full_ema_state` gave (full tensors) into ``ema``, each shadow tensor sharded like this
    rank's (under FSDP)."""
    state = dict(state)
    state["shadow"] = {k: D.shard_like(v, ema.shadow[k]) for k, v in state["shadow"].items()}
    ema.load_state_dict(state)


def gathered_ema_model(build_model: Callable[[], nn.Module], ema: EMA, ctx: D.DistContext) -> nn.Module | None:
    """An unsharded model (``build_model()``) holding the EMA weights, on rank 0; ``None`` elsewhere (gathering
    is collective: every rank calls it)."""
    full = full_ema_state(ema)
    if not ctx.is_main:
        return None
    model = build_model().to(ctx.device)
    model.load_state_dict(sampling_state_dict({"ema": full}))
    return model.eval()


class EMAModels:
    """The model previews and the result sample with: the EMA weights in a model of their own.

    Sharded (``sharded_sampling``, :attr:`ntm.train.loop.TrainJob.sharded_sampling`, under torchrun with
    FSDP): one FSDP-sharded copy built like the
    training model (on the meta device with ``train.meta_init``; the same mesh), float32 whatever
    ``train.mixed_precision`` (samples as from the gathered copy), every unit resharded after its forward,
    frozen; made on first use; each :meth:`get` copies the EMA's shards into it,
    rank by rank, with no communication. Otherwise :func:`gathered_ema_model` (on rank 0).
    """

    def __init__(self, build_model: Callable[[], nn.Module], train: TrainConfig, ema: EMA, ctx: D.DistContext, *,
                 sharded_sampling: bool = False) -> None:
        self.build_model, self.train, self.ema, self.ctx = build_model, train, ema, ctx
        self.sharded = sharded_sampling and ctx.distributed and train.parallel == "fsdp"
        self._copy: nn.Module | None = None

    def get(self) -> nn.Module | None:
        if not self.sharded:
            return gathered_ema_model(self.build_model, self.ema, self.ctx)
        if self._copy is None:
            cfg = self.train
            with torch.random.fork_rng(devices=[]):  # a meta copy draws (then discards) initial weights
                with torch.device("meta") if cfg.meta_init else contextlib.nullcontext():
                    model = self.build_model()
                model.requires_grad_(False)
                model = D.wrap(model, self.ctx, "fsdp", mesh=D.device_mesh(self.ctx, cfg.mesh),
                               reshard_after_forward=True, seed=cfg.seed if cfg.meta_init else None)
            self._copy = D.enable_sharded_calls(model)
        D.copy_shards(self._copy, self.ema.shadow, self.ema.buffers)
        return self._copy.eval()


__all__ = ["EMAModels", "full_ema_state", "gathered_ema_model", "load_full_ema_state"]
