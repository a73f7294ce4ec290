"""Process-group setup and model wrapping for ``torchrun`` (FSDP2 or DDP), gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world_size


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device_choice: str) -> DistContext:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, device)


def shutdown(ctx: DistContext, *, clean: bool = True) -> None:
    """Destroy the process group; ``clean`` (every rank got here) meets at a barrier first.

    Without the barrier a rank that finishes first tears its gloo pairs down while
    another still has work in flight with it, which can abort the process at exit.
    After an error the other ranks may never arrive, so no barrier then.
    """
    if ctx.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        yield from _post_order(child)
    yield module


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules FSDP shards as units of their own before the root, innermost first.

    The model declares them: ``model.shard_units()`` (e.g. :meth:`ntm.model.NTM.shard_units`,
    typically its transformer blocks). A model without that method is sharded at the root
    only. The root itself and repeats are dropped, and the units are put in module-tree
    post-order (a unit nested in another comes first, as ``fully_shard`` needs); units that
    do not nest keep the model's order.
    """
    declare = getattr(model, "shard_units", None)
    if declare is None:
        return []
    declared = {id(m): m for m in declare() if m is not model}
    order = {id(m): i for i, m in enumerate(_post_order(model))}
    foreign = [type(m).__name__ for key, m in declared.items() if key not in order]
    if foreign:
        raise ValueError(f"{type(model).__name__}.shard_units() returned modules that are not its submodules: "
                         f"{', '.join(foreign)}")
    return sorted(declared.values(), key=lambda m: order[id(m)])


def wrap(model: nn.Module, ctx: DistContext, strategy: str) -> nn.Module:
    """FSDP2: ``fully_shard`` every unit of :func:`shard_units`, then the root. DDP: replicate.

    Training goes through ``model.forward`` only (the loss is computed
    there), so no other method needs registering; sampling and evaluation
    use a gathered, unsharded copy of the EMA weights.
    """
    if not ctx.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in shard_units(model):
            fully_shard(module)
        fully_shard(model)
        return model
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    raise ValueError(f"unknown parallel strategy {strategy!r}; use fsdp or ddp")


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameters are the model's (strips DDP and torch.compile wrappers)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch."""
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        with contextlib.nullcontext() if enabled else inner.no_sync():
            yield
        return
    if hasattr(inner, "set_requires_gradient_sync"):  # FSDP2 module
        inner.set_requires_gradient_sync(enabled)
    yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    if dist.is_initialized():
        return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """Gather a DTensor (FSDP shard) into a full tensor; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Distribute a full tensor the way ``like`` (a DTensor shard) is; plain tensors pass through."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict into a (possibly sharded) model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    inner = unwrap(model)
    if dist.is_initialized():
        set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True))
    else:
        inner.load_state_dict(state)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name, unsharded (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(unwrap(model), optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
