"""The denoiser interface: a sampled trajectory -> a clean estimate ``x_hat``.

A denoiser declares what it reads. ``needs_x_trajectory = True`` (the default):
it is called on the x-space trajectory, every latent level decoded by the
transporter's inverse (``__call__``). ``False``: it reads the sampler's
cleanest latent level ``u_0`` alone (``from_u0``) and decodes whatever it
needs itself, so sampling asks the sampler for the u-trajectory only
(``return_trajectory="u"``) and decodes nothing. :meth:`Denoiser.denoise` is
the one place that picks the path for a sampler's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from ntm.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    from ntm.model import NTMConfig
    from ntm.samplers.base import SampleOutput


class DenoiserConfig(ComponentConfig):
    """Base of the denoiser configs: ``build()`` takes no arguments."""

    def build(self) -> "Denoiser":  # pragma: no cover - interface
        raise NotImplementedError

    def for_run(self, run_dir: Path) -> "DenoiserConfig":
        """This config as used on the run in ``run_dir`` (a denoiser with trained weights finds them there)."""
        return self

    def check_model(self, model: "NTMConfig") -> None:
        """Raise a one-line ``ValueError`` when this denoiser cannot serve models of this config."""


class Denoiser(ABC):
    needs_x_trajectory: ClassVar[bool] = True
    """True: reads the decoded x-space trajectory (:meth:`__call__`). False: reads ``u_0`` alone
    (:meth:`from_u0`), so sampling skips decoding the latent levels."""

    @abstractmethod
    def __call__(self, model: torch.nn.Module, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """``trajectory`` ``(K + 1, B, N, d)`` in x-space (``x_{t_0} .. x_{t_K}``) -> ``x_hat`` ``(B, N, d)``."""

    def from_u0(self, model: torch.nn.Module, u0: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """``u_0`` ``(B, N, d)``, the sampled cleanest latent level, and the ``(K + 1,)`` levels -> ``x_hat``.

        Implemented by the denoisers with ``needs_x_trajectory = False``.
        """
        raise NotImplementedError(f"{type(self).__name__} reads the x-space trajectory, not u_0")

    def trajectory_request(self) -> bool | Literal["u"]:
        """The ``return_trajectory`` to sample with so that :meth:`denoise` finds what it reads."""
        return True if self.needs_x_trajectory else "u"

    def denoise(self, model: torch.nn.Module, out: "SampleOutput", cond: Tensor | None = None) -> Tensor:
        """``x_hat`` from a sampler's output drawn with ``return_trajectory=self.trajectory_request()``.

        A sampler without a u-space trajectory (one that runs in x-space) gives the x-trajectory instead.
        """
        if not self.needs_x_trajectory and out.u_trajectory is not None:
            return self.from_u0(model, out.u_trajectory[0], out.times, cond)
        if out.x_trajectory is None:
            raise ValueError(f"{type(self).__name__} needs the sampled trajectory: sample with "
                             f"return_trajectory={self.trajectory_request()!r}")
        return self(model, out.x_trajectory, out.times, cond)


DENOISERS: Registry[Denoiser] = Registry("denoiser", base=Denoiser)

__all__ = ["DENOISERS", "ComponentConfig", "Denoiser", "DenoiserConfig"]
