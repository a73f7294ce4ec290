"""The sampler interface: ``sampler(model, n, cond) -> SampleOutput``, every setting in the config.

A sampler is built from its frozen config and reads every setting (steps,
guidance, temperature, ...) from it; a caller who wants other settings builds
another sampler, ``cfg.replace(guidance=2.0).build()``.

A sampler with ``splits_batch = True`` also takes ``rows=Rows(start, stop, total)``: it then samples rows
``start:stop`` of a batch of ``total`` (``n = stop - start``, the condition holds those rows) and every row gets
exactly the noise it gets when the whole batch is sampled at once. Its draws go through :func:`draw_normal`
and :func:`draw_from`, which draw for the whole batch and keep the rows: ranks sharing a sharded model
(``ntm.train.distributed``) each sample their rows, and together they give the one-process result.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from ntm.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.distributions import Distribution
    from ntm.model import NTM, NTMConfig


GUIDANCE_MAX = 100.0
"""Largest classifier-free guidance weight a sampler config accepts. Weights in use are single digits; far beyond
this, float32 cancels in the guided combination (``1 + w - w s`` is 0 at ``w = 1e30``) and samples become NaN."""

TEMPERATURE_MAX = 100.0
"""Largest sampling temperature a sampler config accepts (temperatures in use are near 1; the noise is scaled by it,
and at ``1e30`` every sample overflows). Temperatures must also be > 0."""


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


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows ``start:stop`` of a batch of ``total`` examples: the part one call samples (e.g. one rank's)."""

    start: int
    stop: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop <= self.total:
            raise ValueError(f"rows {self.start}:{self.stop} are not a non-empty part of a batch of {self.total}")

    @property
    def count(self) -> int:
        return self.stop - self.start


def draw_normal(shape: tuple[int, ...], rows: Rows | None = None, *, generator: torch.Generator | None = None,
                dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
    """``torch.randn(shape)``; with ``rows``, the draw for the whole batch (``(rows.total, *shape[1:])``) at those rows."""
    if rows is None:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    full = torch.randn((rows.total, *shape[1:]), generator=generator, dtype=dtype, device=device)
    return full[rows.start : rows.stop]


def draw_from(distribution: "Distribution", temperature: float = 1.0, generator: torch.Generator | None = None,
              rows: Rows | None = None) -> Tensor:
    """``distribution.sample(temperature, generator)``; with ``rows`` (``distribution`` holds those rows), the draw
    for the whole batch at those rows: the other rows are filled with copies of the first (so the draws consume
    the generator as for the whole batch) and dropped afterwards."""
    if rows is None:
        return distribution.sample(temperature, generator)
    first = distribution.params()[next(iter(distribution.params()))]
    index = torch.zeros(rows.total, dtype=torch.long, device=first.device)
    index[rows.start : rows.stop] = torch.arange(rows.count, device=first.device)
    padded = distribution.map(lambda t: t[index])
    return padded.sample(temperature, generator)[rows.start : rows.stop]


class Sampler(ABC):
    splits_batch: ClassVar[bool] = False
    """Whether :meth:`__call__` takes ``rows=`` (see the module docstring); without it a sharded caller has every
    rank sample the whole batch."""

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

__all__ = ["GUIDANCE_MAX", "SAMPLERS", "TEMPERATURE_MAX", "Rows", "SampleOutput", "Sampler", "SamplerConfig", "draw_from", "draw_normal",
           "model_device_dtype"]
