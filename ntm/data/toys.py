"""2-D toy sources: eight-gaussians, checkerboard, moons, spirals, and an explicit Gaussian mixture.

Data are generated on the fly. The global training batch at step ``i``
(``batch_size * world_size`` points) is drawn from a generator seeded by
``("toy/train", seed, i)`` and rank ``r`` keeps rows ``[r * B, (r + 1) * B)``,
so the batch is a pure function of ``(seed, i, rank, world_size)`` and a
resumed run sees identical batches. The held-out set is ``num_eval`` points
drawn once from the stream ``("toy/eval", name, config.seed)``, which the
training stream never touches.

Mixture-based sources (``eight-gaussians``, ``mixture``) expose ``.mixture``,
an :class:`ntm.data.mixture.GaussianMixture` with the exact density (the oracle math on
it is in :mod:`eval.oracle`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Iterator

import pydantic
import torch
from torch import Tensor

from ntm.data.base import DATA_SOURCES, Batch, ComponentConfig, DataSource, DataSpec
from ntm.data.mixture import GaussianMixture
from ntm.data.streams import check_stream_args, seeded_generator


class ToyConfig(ComponentConfig):
    """Fields shared by every toy source."""

    seed: int = 0
    """Seed of the held-out set (the training stream is seeded by the run's seed)."""
    num_eval: int = pydantic.Field(2048, ge=1)
    """Number of held-out points."""


class ToySource(DataSource):
    """Procedural 2-D data: subclasses implement :meth:`sample`."""

    config: ToyConfig

    def __init__(self, config: ToyConfig, dim: int = 2) -> None:
        self.config = config
        self.spec = DataSpec(shape=(dim,), num_classes=0, kind="points")
        self._eval: Tensor | None = None

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` i.i.d. points, ``(n, D)`` float64."""

    @property
    def eval_points(self) -> Tensor:
        """The fixed held-out set, ``(num_eval, D)`` float32."""
        if self._eval is None:
            gen = seeded_generator("toy/eval", self.config.registry_name, self.config.seed)
            self._eval = self.sample(self.config.num_eval, gen).to(torch.float32)
        return self._eval

    def train_batches(
        self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Endless ``Batch(x (batch_size, D))``; step ``i`` is drawn from ``("toy/train", seed, i)``."""
        check_stream_args(batch_size, start_step, rank, world_size)
        step = start_step
        while True:
            points = self.sample(batch_size * world_size, seeded_generator("toy/train", seed, step))
            yield Batch(x=points[rank * batch_size : (rank + 1) * batch_size].to(torch.float32))
            step += 1

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        """The held-out points in a fixed order, ``(<= batch_size, D)`` per batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        points = self.eval_points
        total = points.shape[0] if max_examples is None else min(points.shape[0], max(0, max_examples))
        for start in range(0, total, batch_size):
            yield Batch(x=points[start : min(start + batch_size, total)])

    def stats(self) -> dict:
        return {"normalisation": "identity"}


class MixtureSource(ToySource):
    """Samples an oracle :class:`GaussianMixture` (``.mixture``) with its exact density."""

    def __init__(self, config: ToyConfig, mixture: GaussianMixture) -> None:
        super().__init__(config, dim=mixture.dim)
        self.mixture = mixture

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.mixture.sample(n, generator=generator)

    def stats(self) -> dict:
        return {"normalisation": "identity", "mixture": self.mixture.to_dict()}


# -- eight-gaussians ----------------------------------------------------------


class EightGaussiansConfig(ToyConfig):
    num_components: int = pydantic.Field(8, ge=1)
    """Number of equal-weight Gaussians on the circle."""
    radius: float = pydantic.Field(2.0, gt=0.0)
    """Radius of the circle the means lie on."""
    std: float = pydantic.Field(0.2, gt=0.0)
    """Standard deviation of each (isotropic) component."""

    def build(self) -> "EightGaussians":
        return EightGaussians(self)


@DATA_SOURCES.register("eight-gaussians", EightGaussiansConfig)
class EightGaussians(MixtureSource):
    """``GaussianMixture.ring(num_components, radius, std)``: equal-weight Gaussians on a circle."""

    def __init__(self, config: EightGaussiansConfig) -> None:
        super().__init__(config, GaussianMixture.ring(config.num_components, config.radius, config.std))


# -- mixture ------------------------------------------------------------------

_RING = GaussianMixture.ring()


class MixtureConfig(ToyConfig):
    weights: tuple[float, ...] = tuple(_RING.weights.tolist())
    """Component weights (J,), summing to 1."""
    means: tuple[float, ...] = tuple(_RING.means.flatten().tolist())
    """Component means, row-major (J * D,); D = len(means) / J. (Python and JSON may also give (J, D) nested.)"""
    variances: tuple[float, ...] = tuple(_RING.variances.tolist())
    """Per-component isotropic variances (J,), each > 0."""

    @pydantic.field_validator("means", mode="before")
    @classmethod
    def _flatten(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        """Nested ``(J, D)`` means -> flat, checking J against ``weights``."""
        if isinstance(value, (list, tuple)) and value and all(isinstance(m, (list, tuple)) for m in value):
            weights = info.data.get("weights")
            if len({len(m) for m in value}) != 1 or (weights is not None and len(value) != len(weights)):
                raise ValueError(f"nested means must be {len(weights or ())} points of one dimension")
            return tuple(float(x) for m in value for x in m)
        return value

    @pydantic.model_validator(mode="after")
    def _check(self) -> "MixtureConfig":
        if not self.weights or not self.means or len(self.means) % len(self.weights):
            raise ValueError(f"{len(self.means)} mean values do not split into {len(self.weights)} components")
        self.mixture()  # raises ValueError on inconsistent shapes, bad weights or variances
        return self

    def mixture(self) -> GaussianMixture:
        """The oracle mixture: ``weights (J,)``, ``means (J, D)``, ``variances (J,)``."""
        means = torch.tensor(self.means, dtype=torch.float64).reshape(len(self.weights), -1)
        return GaussianMixture(torch.tensor(self.weights), means, torch.tensor(self.variances))

    def build(self) -> "Mixture":
        return Mixture(self)


@DATA_SOURCES.register("mixture", MixtureConfig)
class Mixture(MixtureSource):
    """An explicit isotropic Gaussian mixture; ``spec.shape = (D,)`` from the means (default: the 8-ring)."""

    def __init__(self, config: MixtureConfig) -> None:
        super().__init__(config, config.mixture())


# -- checkerboard -------------------------------------------------------------


class CheckerboardConfig(ToyConfig):
    cells: int = pydantic.Field(4, ge=2)
    """Squares per side; points fill the squares whose row + column is even."""
    half_width: float = pydantic.Field(2.0, gt=0.0)
    """The board covers ``[-half_width, half_width]^2``."""

    def build(self) -> "Checkerboard":
        return Checkerboard(self)


@DATA_SOURCES.register("checkerboard", CheckerboardConfig)
class Checkerboard(ToySource):
    """Uniform on the "black" squares of a ``cells x cells`` board over ``[-h, h]^2``."""

    config: CheckerboardConfig

    def __init__(self, config: CheckerboardConfig) -> None:
        super().__init__(config)
        n = config.cells
        self._cells = torch.tensor([(i, j) for i in range(n) for j in range(n) if (i + j) % 2 == 0], dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        which = torch.randint(self._cells.shape[0], (n,), generator=generator)
        within = torch.rand(n, 2, dtype=torch.float64, generator=generator)
        side = 2 * self.config.half_width / self.config.cells
        return (self._cells[which] + within) * side - self.config.half_width


# -- moons --------------------------------------------------------------------


class MoonsConfig(ToyConfig):
    noise: float = pydantic.Field(0.1, ge=0.0)
    """Standard deviation of the Gaussian noise added to each point (output units)."""
    scale: float = pydantic.Field(1.5, gt=0.0)
    """Scale applied to the centred unit moons (width 3, height 1.5 before scaling)."""

    def build(self) -> "Moons":
        return Moons(self)


@DATA_SOURCES.register("moons", MoonsConfig)
class Moons(ToySource):
    """Two interleaving half circles (as in ``sklearn.datasets.make_moons``), centred and scaled."""

    config: MoonsConfig

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        lower = torch.randint(2, (n,), generator=generator).to(torch.float64)
        theta = math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
        eps = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        sign = 1 - 2 * lower  # +1 upper moon, -1 lower moon
        x = lower + sign * torch.cos(theta) - 0.5
        y = 0.5 * lower + sign * torch.sin(theta) - 0.25
        return self.config.scale * torch.stack([x, y], dim=-1) + self.config.noise * eps


# -- spirals ------------------------------------------------------------------


class SpiralsConfig(ToyConfig):
    num_arms: int = pydantic.Field(2, ge=1)
    """Number of interleaved spiral arms."""
    turns: float = pydantic.Field(1.5, gt=0.0)
    """Revolutions each arm makes from the centre outwards."""
    radius: float = pydantic.Field(2.0, gt=0.0)
    """Radius at the outer end of each arm."""
    noise: float = pydantic.Field(0.05, ge=0.0)
    """Standard deviation of the Gaussian noise added to each point."""

    def build(self) -> "Spirals":
        return Spirals(self)


@DATA_SOURCES.register("spirals", SpiralsConfig)
class Spirals(ToySource):
    """Archimedean arms ``r = radius * s``, angle ``2 pi (turns * s + arm / num_arms)``, ``s = sqrt(U)``."""

    config: SpiralsConfig

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        c = self.config
        arm = torch.randint(c.num_arms, (n,), generator=generator).to(torch.float64)
        s = torch.rand(n, dtype=torch.float64, generator=generator).sqrt()
        eps = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        angle = 2 * math.pi * (c.turns * s + arm / c.num_arms)
        return c.radius * s[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1) + c.noise * eps


__all__ = [
    "Checkerboard", "CheckerboardConfig", "EightGaussians", "EightGaussiansConfig", "Mixture", "MixtureConfig",
    "MixtureSource", "Moons", "MoonsConfig", "Spirals", "SpiralsConfig", "ToyConfig", "ToySource",
]
