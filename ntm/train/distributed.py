"""Process-group setup and model wrapping for ``torchrun`` (FSDP2 or DDP), gloo on CPU, NCCL on GPU.

FSDP2 (:func:`wrap`): ``fully_shard`` per unit the model declares (:func:`shard_units`), then the root, on a flat
mesh or an HSDP ``(replicate, shard)`` mesh (:func:`device_mesh`), with an optional bf16 parameter policy and
per-unit ``reshard_after_forward``. :func:`checkpoint_activations` recomputes units' activations in backward.
:func:`materialize` gives a model built on the meta device its weights after sharding (:mod:`ntm.nn.init`).

Sharded use outside training (:func:`copy_shards`, :func:`run_sharded`, :func:`batch_rows`,
:func:`gather_rows`): every rank holds its shard of a model, runs the same calls on its own rows of a batch,
and the rows are gathered afterwards, so no device ever holds the whole model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import types
from typing import Any, Callable, Iterator, Literal

import torch
import torch.distributed as dist
from torch import nn

from ntm.train.errors import TrainingError


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

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (collective under torchrun)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world_size


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device cuda: CUDA is not available on this machine (use --train.device cpu "
                                "or auto)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def all_finite(tensors: Any, ctx: DistContext | None = None) -> bool:
    """Whether every floating-point tensor in ``tensors`` (an iterable; DTensors: this rank's shards) is finite,
    on every rank (collective under torchrun); one host sync."""
    from torch.distributed.tensor import DTensor

    checks = [torch.isfinite(t.to_local() if isinstance(t, DTensor) else t).all()
              for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    local = bool(torch.stack(checks).all().item()) if checks else True
    return not (ctx or DistContext()).any(not local)


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


def check_mesh(shape: tuple[int, int] | None, world_size: int) -> None:
    """One-line :class:`TrainingError` unless the ``train.mesh`` shape ``(replicate, shard)`` covers the world."""
    if shape is not None and shape[0] * shape[1] != world_size:
        raise TrainingError(f"train.mesh {shape[0]} x {shape[1]} (replicate x shard) is {shape[0] * shape[1]} ranks, "
                            f"but the world size is {world_size}")


def device_mesh(ctx: DistContext, shape: tuple[int, int] | None):
    """The FSDP mesh: ``None`` (FSDP's default, every rank one shard group) without ``shape``, else a 2-D
    ``("replicate", "shard")`` mesh (HSDP). Checked by :func:`check_mesh` first."""
    check_mesh(shape, ctx.world_size)
    if shape is None or not ctx.distributed:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(ctx.device.type, tuple(shape), mesh_dim_names=("replicate", "shard"))


def mixed_precision_policy(choice: str, *, root: bool = False):
    """FSDP2's ``MixedPrecisionPolicy`` for ``train.mixed_precision``: 'bf16' gathers bfloat16 weights for compute
    and reduces gradients in float32; 'none' keeps float32. The root does not cast its inputs (the data and the
    loss's noise stay float32); the units do (their inputs are activations)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if choice == "none":
        return MixedPrecisionPolicy()
    if choice == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    cast_forward_inputs=not root)
    raise ValueError(f"unknown mixed precision {choice!r}; use none or bf16")


def wrap(
    model: nn.Module, ctx: DistContext, strategy: str, *, mesh: Any = None, mixed_precision: str = "none",
    reshard_after_forward: bool | Literal["auto"] = "auto", seed: int | None = None,
) -> nn.Module:
    """FSDP2: ``fully_shard`` every unit of :func:`shard_units`, then the root. DDP: replicate.

    ``mesh`` (:func:`device_mesh`; ``None``: FSDP's default flat mesh), ``mixed_precision``
    (:func:`mixed_precision_policy`) and ``reshard_after_forward`` (per unit; 'auto': every unit but the last,
    whose weights backward needs first; the root keeps FSDP's default) apply to FSDP. A model built on the meta
    device is given its weights by :func:`materialize` with ``seed`` (``None``: storage only, for weights loaded
    afterwards, e.g. on resume): after sharding under FSDP (each rank draws its shards), before wrapping otherwise. Without a process group the model is returned as it is (materialized
    if on meta).

    Training goes through ``model.forward`` only (the loss is computed there); other uses of a sharded model
    go through :func:`run_sharded`.
    """
    on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    if not ctx.distributed or strategy == "ddp":
        model = materialize(model, ctx.device, seed) if on_meta else model.to(ctx.device)
        if not ctx.distributed:
            return model
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy != "fsdp":
        raise ValueError(f"unknown parallel strategy {strategy!r}; use fsdp or ddp")
    from torch.distributed.fsdp import fully_shard

    if not on_meta:
        model = model.to(ctx.device)
    units = shard_units(model)
    for i, module in enumerate(units):
        reshard = reshard_after_forward if isinstance(reshard_after_forward, bool) else i < len(units) - 1
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard, mp_policy=mixed_precision_policy(mixed_precision))
    fully_shard(model, mesh=mesh, mp_policy=mixed_precision_policy(mixed_precision, root=True))
    return materialize(model, ctx.device, seed) if on_meta else model


def materialize(model: nn.Module, device: torch.device, seed: int | None) -> nn.Module:
    """Give a model built on the meta device (possibly sharded) storage on ``device`` and its initial weights.

    ``seed`` set: the global RNG is seeded with it and :func:`ntm.nn.init.reset` re-draws every weight as an
    eager build after ``torch.manual_seed(seed)`` draws it (each rank keeps its shards); a module that cannot
    re-draw raises a one-line :class:`TrainingError` naming ``train.meta_init``. ``seed=None``: storage only
    (the values are garbage until loaded). The global RNG is left as the re-draw leaves it, as after an eager build.
    """
    from ntm.nn.init import ResetError, reset

    model.to_empty(device=device)
    if seed is not None:
        torch.manual_seed(seed)
        try:
            reset(model)
        except ResetError as e:
            raise TrainingError(f"train.meta_init: {e}") from None
    return model


def checkpoint_activations(model: nn.Module, mode: Literal["none", "selective", "full"]) -> list[nn.Module]:
    """Recompute the activations of shard units in backward (non-reentrant ``torch.utils.checkpoint``).

    ``"full"``: every unit of :func:`shard_units`; ``"selective"``: every second one (the first, third, ...);
    ``"none"``: nothing. The unit's ``forward`` is replaced on the instance, so parameter names, state dicts and
    FSDP's hooks (which run around it) are unchanged. Without gradients (sampling, evaluation) the units run
    plainly. Returns the checkpointed units.
    """
    if mode == "none":
        return []
    if mode not in ("selective", "full"):
        raise ValueError(f"unknown activation checkpointing {mode!r}; use none, selective or full")
    units = shard_units(model)
    chosen = units if mode == "full" else units[::2]
    for unit in chosen:
        unit.forward = _checkpointed(unit.forward)
    return chosen


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


# -- a sharded model outside training ----------------------------------------------------------------------
def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is an FSDP2 module over more than one rank (every rank must then take part in its use)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def copy_shards(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
    """Copy ``params`` and ``buffers`` (by name) into ``model``'s, rank by rank with no communication: a DTensor
    source (e.g. an EMA shadow of a model sharded the same way) gives its local shard to the same shard of
    ``model``; plain tensors are copied whole."""
    own = dict(model.named_parameters())
    own_buffers = dict(model.named_buffers())
    for table, sources in ((own, params), (own_buffers, buffers)):
        missing = sorted(set(sources) - set(table))
        if missing:
            raise KeyError(f"the model has no tensor named {', '.join(missing[:4])}")
        for name, source in sources.items():
            target = table[name]
            local = source.to_local() if hasattr(source, "to_local") else source
            (target.to_local() if hasattr(target, "to_local") else target).copy_(local)


def _call(self: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(self, *args, **kwargs)


def enable_sharded_calls(model: nn.Module) -> nn.Module:
    """Let :func:`run_sharded` call any code on ``model`` (an FSDP2 root): a method registered with
    ``register_fsdp_forward_method`` runs it inside the root's forward hooks, so the root's own weights are
    gathered meanwhile and every unit gathers its own when called. No-op for other models."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if isinstance(model, FSDPModule) and not hasattr(model, "sharded_call"):
        model.sharded_call = types.MethodType(_call, model)
        register_fsdp_forward_method(model, "sharded_call")
    return model


def run_sharded(model: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(model, *args, **kwargs)``; for a model prepared by :func:`enable_sharded_calls` (collective: every rank
    calls it, with the same sequence of calls on the model), inside the root's forward hooks, resharding the
    root's weights afterwards. Other models are called plainly."""
    call = getattr(model, "sharded_call", None)
    if call is None:
        return fn(model, *args, **kwargs)
    try:
        return call(fn, *args, **kwargs)
    finally:
        model.reshard()


class ShardError(TrainingError):
    """A batch that does not split evenly over the ranks of a sharded model."""


def batch_rows(n: int, *, what: str = "batch") -> slice:
    """This rank's rows of a batch of ``n`` split evenly over the process group (all rows without one).

    Raises a one-line :class:`ShardError` when the world size does not divide ``n`` (``what`` names the batch).
    """
    if not dist.is_initialized():
        return slice(0, n)
    world, rank = dist.get_world_size(), dist.get_rank()
    if n % world:
        raise ShardError(f"the {what} of {n} does not split evenly over {world} ranks; use a multiple of {world}")
    per = n // world
    return slice(rank * per, (rank + 1) * per)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (equal counts, as :func:`batch_rows` gives) concatenated in rank order, on every rank.

    Gathered on the tensor's device (gloo gathers on the CPU).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def all_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sums of ``values`` over the process group (float64); the values themselves without one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    on = device if device is not None and device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return t.tolist()


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
