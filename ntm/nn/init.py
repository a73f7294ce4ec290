"""Re-drawing a model's initial weights after meta-device construction (``train.meta_init``).

A model built under ``torch.device("meta")`` has shapes but no values; after
sharding and ``to_empty`` its weights are garbage. :func:`reset` fills them
again with exactly what eager construction gives for the same seed: it walks
the module tree and, for every module whose class defines
``reset_parameters()``, calls it; other modules pass the call on to their
children in registration order. So a module that draws nothing itself needs
nothing, torch's layers (``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``,
...) re-draw their own parameters, and a module with parameters of its own or
initial values set after its children were built defines
``reset_parameters()`` that replays its constructor: the same draws in the
same order (:func:`reset` for a child; its own parameters are whole CPU
tensors while it runs). ``tests/distributed/test_meta_init.py`` checks that
meta construction plus :func:`reset` equals eager construction for every
registered component, which keeps the two in step.

Draws come from the global CPU generator, as in eager construction (which
builds on the CPU). A parameter held as a DTensor shard (FSDP2) is swapped
for a full CPU tensor while its module re-draws it, and the rank's shard is
copied back afterwards: one module's own parameters are whole at a time,
never the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class ResetError(TypeError):
    """A module with parameters or buffers of its own that cannot re-draw them (no ``reset_parameters()``)."""


def _is_plain_cpu(t: Tensor) -> bool:
    return not hasattr(t, "device_mesh") and t.device.type == "cpu"


def _write_back(target: Tensor, full: Tensor) -> None:
    """Copy ``full`` (a whole tensor on the CPU) into ``target``: its local shard when ``target`` is a DTensor."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None).to_local()
        target.to_local().copy_(local)
    else:
        target.copy_(full)


@contextlib.contextmanager
@torch.no_grad()
def full_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s own parameters and buffers (not its children's) are whole CPU tensors.

    In-place initialisation of them (``nn.init.*``, ``copy_``) then draws from the global CPU generator as
    eager construction does; on exit the values go back into the real tensors (a DTensor gets its shard) and
    those tensors are put back in place. Tensors that already are whole CPU tensors are used as they are.
    """
    swapped: list[tuple[dict, str, Tensor]] = []
    for table in (module._parameters, module._buffers):
        for name, t in list(table.items()):
            if t is None or _is_plain_cpu(t):
                continue
            shape = tuple(t.shape)
            full = torch.empty(shape, dtype=t.dtype, device="cpu")
            table[name] = nn.Parameter(full, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else full
            swapped.append((table, name, t))
    try:
        yield module
    finally:
        for table, name, original in swapped:
            _write_back(original, table[name].detach())
            table[name] = original


def _own_tensors(module: nn.Module) -> list[str]:
    return [n for n, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]


def reset(module: nn.Module, _path: str = "") -> None:
    """Re-draw ``module``'s initial weights as its construction did (same global-RNG draws, same order).

    A module whose class defines ``reset_parameters()`` is reset by it (within :func:`full_parameters`, so
    torch's own layers re-draw in place); any other module resets its children in registration order and
    must hold no parameter or buffer of its own (:class:`ResetError` names it otherwise).
    """
    with torch.no_grad():
        method = getattr(module, "reset_parameters", None)
        if callable(method):
            with full_parameters(module):
                method()
            return
        own = _own_tensors(module)
        if own:
            where = _path or type(module).__name__
            raise ResetError(f"{where} ({type(module).__name__}) holds {', '.join(own)} of its own but defines no "
                             "reset_parameters(), so its initial values cannot be re-drawn after meta-device "
                             "construction")
        for name, child in module.named_children():
            reset(child, f"{_path}.{name}" if _path else name)


def reset_children(module: nn.Module) -> None:
    """:func:`reset` each child of ``module`` in registration order (the usual first part of a ``reset_parameters``)."""
    for child in module.children():
        reset(child)


__all__ = ["ResetError", "full_parameters", "reset", "reset_children"]
