"""Exponential moving average of a module's weights.

The shadow holds a float32 copy of every floating-point parameter (other
parameters and the persistent buffers are copied as they are; non-persistent
buffers, e.g. a cached attention mask, are not model state and stay out, so
the EMA weights load into a fresh model with ``load_state_dict``). Only tensor ops that
DTensor implements are used (``detach``, ``clone``, ``to``, ``lerp_``,
``copy_``), so a model whose parameters are FSDP2 shards works unchanged:
each rank averages its own shard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn


def _float32_copy(t: Tensor) -> Tensor:
    t = t.detach()
    return t.clone() if t.dtype == torch.float32 else t.to(torch.float32)


def persistent_buffers(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s buffers that its ``state_dict`` holds (``register_buffer(..., persistent=False)`` ones excluded)."""
    non_persistent = {f"{prefix}.{name}" if prefix else name
                      for prefix, module in model.named_modules() for name in module._non_persistent_buffers_set}
    return {n: b for n, b in model.named_buffers() if n not in non_persistent}


def _check_names(what: str, expected: Mapping[str, Any], got: Mapping[str, Any]) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise ValueError(f"EMA {what} does not match the EMA's parameters: {'; '.join(parts)}")


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` after each optimizer step.

    Args:
        model: the module whose parameters are averaged; the shadow starts as
            a copy of them, on their device.
        decay: the target decay in ``[0, 1]``.
        warmup: if set, the decay used by :meth:`update` at update ``n`` is
            ``min(decay, (1 + n) / (10 + n))``, so early averages are not
            dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False) -> None:
        self.decay = self._checked(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.shadow[name] = _float32_copy(p) if p.is_floating_point() else p.detach().clone()
            self.buffers: dict[str, Tensor] = {n: b.detach().clone() for n, b in persistent_buffers(model).items()}

    @staticmethod
    def _checked(decay: float) -> float:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        return float(decay)

    def decay_at(self, step: int) -> float:
        """The decay for update number ``step`` (0-based): ``min(decay, (1+step)/(10+step))`` with warmup."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> float:
        """Move the shadow towards ``model``'s parameters and copy its buffers; returns the decay used.

        ``decay=None`` uses :meth:`decay_at` of the number of updates so far.
        """
        d = self.decay_at(self.num_updates) if decay is None else self._checked(decay)
        params = dict(model.named_parameters())
        _check_names("update from the model", self.shadow, params)
        for name, shadow in self.shadow.items():
            p = params[name].detach()
            if shadow.is_floating_point():
                shadow.lerp_(p.to(shadow.dtype), 1.0 - d)
            else:
                shadow.copy_(p)
        buffers = persistent_buffers(model)
        _check_names("update from the model's buffers", self.buffers, buffers)
        for name, buf in self.buffers.items():
            buf.copy_(buffers[name].detach())
        self.num_updates += 1
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters (cast to their dtype) and buffers with the EMA's."""
        params = dict(model.named_parameters())
        _check_names("copy into the model", self.shadow, params)
        for name, shadow in self.shadow.items():
            params[name].detach().copy_(shadow)
        buffers = persistent_buffers(model)
        _check_names("copy into the model's buffers", self.buffers, buffers)
        for name, buf in self.buffers.items():
            buffers[name].detach().copy_(buf)

    @contextlib.contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the body with the EMA weights in ``model``; its own weights are restored on exit.

        Holds one extra copy of the model's parameters and buffers meanwhile.
        """
        with torch.no_grad():
            saved_params = {n: p.detach().clone() for n, p in model.named_parameters()}
            saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.detach().copy_(saved_params[n])
                for n, b in model.named_buffers():
                    b.detach().copy_(saved_buffers[n])

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors (loads with ``torch.load(weights_only=True)``)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
            "buffers": dict(self.buffers),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy a saved shadow into this EMA (keeping its tensors' devices and dtypes).

        ``decay`` and ``warmup`` stay as constructed (they come from the run's
        config); ``num_updates`` is restored so the warmup resumes where it stopped.
        """
        _check_names("state dict", self.shadow, state["shadow"])
        _check_names("state dict buffers", self.buffers, state.get("buffers", {}))
        for name, t in state["shadow"].items():
            self.shadow[name].copy_(t)
        for name, t in state.get("buffers", {}).items():
            self.buffers[name].copy_(t)
        self.num_updates = int(state["num_updates"])
