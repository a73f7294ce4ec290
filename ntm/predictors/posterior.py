"""The analytic posterior predictor of docs/math.md §4 driven by any x-hat model.

``mu = c_x x_hat(u_t, t) + c_t u_t`` and ``log_sigma = log sigma_tilde``, i.e. a
K-step Gaussian reverse model read on ``u_t`` as if it were ``x_t``. With
``learned_scale`` a zero-initialised projection of the x-hat model's hidden
states corrects the log-scale (§9: at step 0 it *is* the posterior sampler).
x-hat models register in ``XHAT_MODELS``. One that predicts a flow-matching
velocity ``v = eps - x`` implements :class:`VelocityXHat` (``velocity-transformer``:
the backbone of the flow-matching baseline and of finetuning); the posterior
predictor built on it is then a :class:`~ntm.predictors.base.VelocityPredictor`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import pydantic
import torch
from torch import Tensor, nn

from ntm.distributions import Gaussian
from ntm.forward import interpolant as I
from ntm.nn.backbone import TokenTransformer
from ntm.nn.init import reset
from ntm.predictors.base import PREDICTORS, Predictor, PredictorConfig, VelocityPredictor
from ntm.spec import ModelDims
from ntm.registry import ComponentConfig, Registry


class XHatModel(nn.Module, ABC):
    """``(x_t, t, cond) -> (x_hat, hidden)``; ``hidden`` is ``(B, N, width)`` or ``None``."""

    hidden_dim: int = 0

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]: ...


class VelocityXHat(XHatModel):
    """An x-hat model that predicts a flow-matching velocity ``v = eps - x``; ``x_hat = x_t - t v`` (§1)."""

    @abstractmethod
    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``x_t`` ``(B, N, d)``, ``t`` ``(B,)`` -> ``(v (B, N, d), hidden (B, N, width) | None)``."""

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        v, h = self.velocity(x_t, t, cond)
        return I.velocity_to_xhat(x_t, t.reshape(-1, 1, 1).to(x_t.dtype), v), h


XHAT_MODELS: Registry[XHatModel] = Registry("x-hat model", base=XHatModel)


class VelocityTransformerConfig(ComponentConfig):
    depth: int = pydantic.Field(6, ge=1)
    """Number of transformer layers."""
    width: int = pydantic.Field(128, ge=8)
    """Hidden width."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads (must divide width)."""
    mlp_ratio: float = pydantic.Field(4.0, gt=0)
    """MLP hidden size as a multiple of width."""

    def build(self, dims: ModelDims) -> "VelocityTransformer":
        return VelocityTransformer(self, dims)


@XHAT_MODELS.register("velocity-transformer", VelocityTransformerConfig)
class VelocityTransformer(VelocityXHat):
    """A flow-matching velocity network; ``x_hat = x_t - t v`` (§1)."""

    def __init__(self, config: VelocityTransformerConfig, dims: ModelDims) -> None:
        super().__init__()
        self.hidden_dim = config.width
        self.net = TokenTransformer(
            dims.token_dim, dims.num_tokens, dims.token_dim, width=config.width, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=dims.num_classes, num_times=1,
            cond_dim=dims.cond_dim, cond_len=dims.cond_len,
        )

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v, h = self.net(x_t, self.net.context((t,), cond)[:, None], return_hidden=True, cond=cond)
        return v.to(x_t.dtype), h


class PosteriorPredictorConfig(PredictorConfig):
    xhat: XHAT_MODELS.field() = VelocityTransformerConfig()
    """The x-hat model read on u_t."""
    learned_scale: bool = False
    """Add a zero-initialised projection of the x-hat model's hidden states to log sigma (§9)."""
    reference: bool = False
    """Keep a frozen copy of the x-hat model (the finetuning teacher) for the mean-alignment loss (§9)."""

    def build(self, dims: ModelDims) -> "PosteriorPredictor":
        return PosteriorPredictor.over(self.xhat.build(dims), dims, learned_scale=self.learned_scale,
                                       reference=self.reference)

    def gives_velocity(self) -> bool:
        """Whether the x-hat model's class is a :class:`VelocityXHat` (then so is the predictor a velocity model)."""
        return issubclass(XHAT_MODELS.get(XHAT_MODELS.name_of(self.xhat)).cls, VelocityXHat)


@PREDICTORS.register("posterior", PosteriorPredictorConfig)
class PosteriorPredictor(Predictor):
    """The §4 posterior read on ``u_t``; a :class:`VelocityPosteriorPredictor` when ``xhat`` is a :class:`VelocityXHat`."""

    @staticmethod
    def over(xhat: nn.Module, dims: ModelDims, learned_scale: bool = False, reference: bool = False) -> "PosteriorPredictor":
        """The posterior predictor over ``xhat``, with the velocity capability exactly when ``xhat`` has it."""
        cls = VelocityPosteriorPredictor if isinstance(xhat, VelocityXHat) else PosteriorPredictor
        return cls(xhat, dims, learned_scale=learned_scale, reference=reference)

    def __init__(self, xhat: nn.Module, dims: ModelDims, learned_scale: bool = False, reference: bool = False) -> None:
        """``xhat`` is any module ``(x_t, t, cond) -> (x_hat, hidden | None)``.

        ``reference``: keep a frozen copy of ``xhat`` (no gradients, never trained) whose
        posterior means :meth:`reference_trajectory` gives, read from x-space.
        """
        super().__init__()
        self.xhat = xhat
        self.reference = None
        if reference:
            self.reference = copy.deepcopy(xhat).requires_grad_(False)
        self.scale = None
        if learned_scale:
            hidden = getattr(xhat, "hidden_dim", 0)
            if not hidden:
                raise ValueError("learned_scale needs an x-hat model that returns hidden states")
            self.scale = nn.Linear(hidden, dims.token_dim)
            nn.init.zeros_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)

    def reset_parameters(self) -> None:
        """Re-draw the constructor's initial weights in its order (meta-device init: :mod:`ntm.nn.init`): the x-hat
        model's, its frozen copy's (equal to them), then the zero scale head's."""
        reset(self.xhat)
        if self.reference is not None:
            for copy_, source in zip(self.reference.parameters(), self.xhat.parameters(), strict=True):
                copy_.copy_(source)
            for copy_, source in zip(self.reference.buffers(), self.xhat.buffers(), strict=True):
                copy_.copy_(source)
        if self.scale is not None:
            reset(self.scale)
            nn.init.zeros_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None) -> Gaussian:
        x_hat, hidden = self.xhat(u_t, t, cond)
        dtype = torch.promote_types(u_t.dtype, torch.float32)
        c_x, c_t, var = I.posterior(s.to(dtype).reshape(-1, 1, 1), t.to(dtype).reshape(-1, 1, 1))
        mu = c_x * x_hat.to(dtype) + c_t * u_t.to(dtype)
        log_sigma = (0.5 * torch.log(var)).expand_as(mu)
        if self.scale is not None:
            log_sigma = log_sigma + self.scale(hidden).to(dtype)
        return Gaussian(mu, log_sigma)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"backbone"``: the x-hat model's trainable parameters; ``"scale"``: the learned-scale head's
        (only with ``learned_scale``); ``"predictor"``: any other trainable parameter (only if there is one).

        Frozen parameters (``requires_grad=False``) are in no group.
        """
        groups = {"backbone": [p for p in self.xhat.parameters() if p.requires_grad]}
        if self.scale is not None:
            groups["scale"] = [p for p in self.scale.parameters() if p.requires_grad]
        claimed = {id(p) for params in groups.values() for p in params}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        if rest:
            groups["predictor"] = rest
        return groups

    @torch.no_grad()
    def reference_trajectory(self, x_levels: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """The frozen copy's posterior means ``mu~(x_hat_ref(x_{t_k}), x_{t_k})`` of §4, read in x-space.

        ``x_levels`` is ``(K, B, N, d)`` holding ``x_{t_1} .. x_{t_K}``; returns ``(K, B, N, d)``
        whose entry ``k - 1`` is the teacher's mean of ``x_{t_{k-1}}`` (the target of §9's alignment).
        """
        if self.reference is None:
            raise ValueError("this posterior predictor keeps no frozen reference (predictor.reference is off)")
        k, b = x_levels.shape[:2]
        t = times[1:].to(x_levels.dtype).repeat_interleave(b)
        s = times[:-1].to(x_levels.dtype).repeat_interleave(b)
        c = None if cond is None else cond.repeat(k)
        x_t = x_levels.flatten(0, 1)
        x_hat, _ = self.reference(x_t, t, c)
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        c_x, c_t, _ = I.posterior(s.to(dtype).reshape(-1, 1, 1), t.to(dtype).reshape(-1, 1, 1))
        return (c_x * x_hat.to(dtype) + c_t * x_t.to(dtype)).unflatten(0, (k, b))


class VelocityPosteriorPredictor(PosteriorPredictor, VelocityPredictor):
    """The posterior predictor over a :class:`VelocityXHat`: also gives the flow-matching velocity."""

    xhat: VelocityXHat

    def __init__(self, xhat: VelocityXHat, dims: ModelDims, learned_scale: bool = False, reference: bool = False) -> None:
        if not isinstance(xhat, VelocityXHat):
            raise TypeError(f"VelocityPosteriorPredictor needs a VelocityXHat, got {type(xhat).__name__}")
        super().__init__(xhat, dims, learned_scale=learned_scale, reference=reference)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``x_t`` ``(B, N, d)``, ``t`` ``(B,)`` -> ``v`` ``(B, N, d)``."""
        return self.xhat.velocity(x_t, t, cond)[0]
