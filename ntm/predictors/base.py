"""The predictor interface: ``(u_t, t, s, cond) -> Gaussian(mu, log_sigma)`` over ``u_s`` (ntm-math §5).

A predictor never sees ``u_s``. Markov predictors look at the current level
only; a trajectory predictor (``markov = False``) also attends to every
noisier level of the same trajectory, which it keeps in a cache while
sampling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor, nn

from ntm.distributions import Gaussian
from ntm.spec import ModelDims
from registry import ComponentConfig, Registry


class Predictor(nn.Module, ABC):
    markov: ClassVar[bool] = True

    @abstractmethod
    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        """One step: ``u_t`` ``(B, N, d)``, times ``t > s`` of shape ``(B,)``."""

    def forward_trajectory(self, u_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Gaussian:
        """Teacher-forced pass over a whole trajectory.

        ``u_levels`` is ``(K, B, N, d)`` holding ``u_1 .. u_K`` (index ``k - 1``
        holds ``u_k``); ``times`` is ``(K + 1,)``. Returns a Gaussian of shape
        ``(K, B, N, d)`` whose entry ``k - 1`` is the prediction of ``u_{k-1}``
        from level ``k``. Markov predictors batch the levels.
        """
        k, b = u_levels.shape[:2]
        t = times[1:].to(u_levels.dtype).repeat_interleave(b)
        s = times[:-1].to(u_levels.dtype).repeat_interleave(b)
        c = None if cond is None else cond.repeat(k)
        g = self(u_levels.flatten(0, 1), t, s, c)
        return g.map(lambda z: z.unflatten(0, (k, b)))

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Flow-matching velocity ``v = eps - x`` at ``x_t`` (predictors built on a velocity model only)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no velocity model; flow matching needs predictor:posterior "
            "with a velocity x-hat model"
        )

    def new_cache(self) -> Any:
        """Sampling state carried from noisier to cleaner levels (``None`` if Markov)."""
        return None

    def step(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None, cache: Any) -> Gaussian:
        """One sampling step; levels arrive from ``t_K`` down to ``t_1``."""
        return self(u_t, t, s, cond)


class PredictorConfig(ComponentConfig):
    def build(self, dims: ModelDims) -> Predictor:  # pragma: no cover - interface
        raise NotImplementedError


PREDICTORS: Registry[Predictor] = Registry("predictor", base=Predictor)
