"""The sampler interface: ``sampler(model, n, cond) -> SampleOutput``, every setting in the config.

A sampler is built from its frozen config and reads every setting (steps,
guidance, temperature, ...) from it; a caller who wants other settings builds
another sampler, ``cfg.replace(guidance=2.0).build()``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.model import NTM, NTMConfig


@dataclasses.dataclass
class SampleOutput:
    x: Tensor | None
    """Samples ``x_{t_0}`` as tokens ``(B, N, d)`` (still carrying noise floor t_0); ``None`` when the call
    asked for the u-trajectory only (``return_trajectory="u"``: nothing decoded)."""
    times: Tensor
    """``(K + 1,)`` levels used."""
    u_trajectory: Tensor | None = None
    """``(K + 1, B, N, d)``: ``u_0 .. u_K`` (on request)."""
    x_trajectory: Tensor | None = None
    """``(K + 1, B, N, d)``: ``x_{t_0} .. x_{t_K}`` (on request; decoded batched over levels)."""
    cond: Tensor | None = None
    """The condition input sampled with, as given (labels, token ids, ...)."""


class SamplerConfig(ComponentConfig):
    """Base of every sampler config: all of a sampler's settings, and the check of a model config."""

    def build(self) -> "Sampler":  # pragma: no cover - interface
        raise NotImplementedError

    def check_model(self, model: "NTMConfig") -> None:
        """Raise a one-line ``ValueError`` when this sampler cannot sample from models of this config."""


class Sampler(ABC):
    def __init__(self, config: SamplerConfig) -> None:
        self.config = config

    @abstractmethod
    def __call__(
        self,
        model: "NTM",
        n: int,
        cond: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        return_trajectory: bool | Literal["u"] = False,
    ) -> SampleOutput:
        """``n`` samples of ``model``; ``generator`` drives all noise.

        ``cond`` is the condition input: ``(n,)`` labels, ``(n, L)`` token ids of a text conditioner, an encoded
        :class:`~ntm.conditioning.condition.Condition`, or ``None`` (the model's null condition); a sampler
        encodes it once (``model.encode``, see :func:`~ntm.samplers.guidance.guidance_conditions`).

        ``return_trajectory``: ``True`` adds the u- and x-space trajectories; ``"u"`` returns the u-trajectory
        alone and decodes nothing (``x`` is ``None``); a sampler that runs in x-space has no u-trajectory and
        treats ``"u"`` as ``True``. The noise drawn does not depend on it.
        """


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision (float32 or wider) the model's tensors live."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, torch.promote_types(tensor.dtype, torch.float32)
    return torch.device("cpu"), torch.float32


SAMPLERS: Registry[Sampler] = Registry("sampler", base=Sampler)

__all__ = ["SAMPLERS", "SampleOutput", "Sampler", "SamplerConfig", "model_device_dtype"]
