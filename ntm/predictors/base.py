"""The predictor interface: ``(u_t, t, s, cond) -> Distribution`` over ``u_s`` (docs/math.md §5).

The distribution is a diagonal :class:`~ntm.distributions.Gaussian` unless the predictor's head says otherwise
(:meth:`PredictorConfig.output_distribution`; the transformer predictors' ``head`` slot, §12).

``cond`` is ``None``, ``(B,)`` int64 labels or an encoded
:class:`~ntm.conditioning.condition.Condition` (whose batch operations match
the labels': ``cond.repeat(k)`` tiles it over levels).

A predictor never sees ``u_s``. Markov predictors look at the current level
only; a trajectory predictor (``markov = False``) also attends to every
noisier level of the same trajectory, which it keeps in a cache while
sampling.

Flow matching is not part of this interface: a predictor that can give a
flow-matching velocity also implements :class:`VelocityPredictor`, and code
that needs one asks for it with :func:`velocity_model`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from ntm.distributions import Distribution, Gaussian
from ntm.nn.component import TrainableComponent
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig, Registry


class Predictor(TrainableComponent, ABC):
    markov: ClassVar[bool] = True
    param_group: ClassVar[str] = "predictor"

    @abstractmethod
    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Distribution:
        """One step: ``u_t`` ``(B, N, d)``, times ``t > s`` of shape ``(B,)``."""

    def forward_trajectory(self, u_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Distribution:
        """Teacher-forced pass over a whole trajectory.

        ``u_levels`` is ``(K, B, N, d)`` holding ``u_1 .. u_K`` (index ``k - 1``
        holds ``u_k``); ``times`` is ``(K + 1,)``. Returns a distribution of shape
        ``(K, B, N, d)`` whose entry ``k - 1`` is the prediction of ``u_{k-1}``
        from level ``k``. Markov predictors batch the levels.
        """
        k, b = u_levels.shape[:2]
        t = times[1:].to(u_levels.dtype).repeat_interleave(b)
        s = times[:-1].to(u_levels.dtype).repeat_interleave(b)
        c = None if cond is None else cond.repeat(k)
        g = self(u_levels.flatten(0, 1), t, s, c)
        return g.map(lambda z: z.unflatten(0, (k, b)))

    def new_cache(self) -> Any:
        """Sampling state carried from noisier to cleaner levels (``None`` if Markov)."""
        return None

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache: Any) -> Distribution:
        """One sampling step; levels arrive from ``t_K`` down to ``t_1``."""
        return self(u_t, t, s, cond)


class VelocityPredictor(ABC):
    """Capability: a flow-matching velocity ``v = eps - x`` at ``x_t = (1 - t) x + t eps`` (docs/math.md §1).

    Implemented, next to :class:`Predictor`, by predictors built on a velocity
    model; the flow-matching loss and the ODE samplers reach it through
    :func:`velocity_model`.
    """

    @abstractmethod
    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``x_t`` ``(B, N, d)``, ``t`` ``(B,)`` in [0, 1] -> ``v`` ``(B, N, d)``."""


VELOCITY_HINT = "predictor:posterior with a velocity x-hat model (xhat:velocity-transformer)"
"""What a model needs for flow matching, in the words of the command line."""


def velocity_model(model: Any) -> VelocityPredictor:
    """``model.predictor`` (of any object holding one, e.g. an :class:`ntm.model.NTM`) if it gives a flow-matching
    velocity, else a one-line ``TypeError``."""
    predictor = model.predictor
    if not isinstance(predictor, VelocityPredictor):
        raise TypeError(f"predictor {type(predictor).__name__} gives no flow-matching velocity; needs {VELOCITY_HINT}")
    return predictor


class PredictorConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Predictor:  # pragma: no cover - interface
        raise NotImplementedError

    def predictor_class(self) -> type[Predictor]:
        """The class this config builds, from its registry entry (e.g. to read ``markov``)."""
        return PREDICTORS.get(PREDICTORS.name_of(self)).cls

    def gives_velocity(self) -> bool:
        """Whether the built predictor is a :class:`VelocityPredictor` (decided from classes, not names)."""
        return issubclass(self.predictor_class(), VelocityPredictor)

    def output_distribution(self) -> type[Distribution]:
        """The class of the distributions the built predictor returns (:class:`Gaussian` unless overridden)."""
        return Gaussian


PREDICTORS: Registry[Predictor] = Registry("predictor", base=Predictor)

__all__ = [
    "PREDICTORS", "VELOCITY_HINT", "Predictor", "PredictorConfig", "VelocityPredictor", "velocity_model",
]
