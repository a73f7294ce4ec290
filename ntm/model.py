"""NTM = transporter + predictor + forward process (+ the condition encoder of a text conditioner) (docs/math.md §5).

``u_k = f(x_{t_k}; t_k)`` for ``k < K`` and ``u_K = x_{t_K}``; step ``k`` has

    l_k = sum_d NLL(u_{k-1,d}; mu_k, sigma_k) - log|det df(x_{t_{k-1}})/dx|

with ``(mu_k, log sigma_k) = g(u_k; t_k, t_{k-1}, c)`` (or another distribution of the predictor's
head, §12: the sum is then its ``nll_sum``). All tensors are
tokens ``(B, N, d)``; trajectories carry a leading level axis.

Conditions. ``cond`` reaching :meth:`NTM.forward`, a sampler, a denoiser or
held-out scoring is the conditioner's input: ``None``, ``(B,)`` labels, or
``(B, L)`` token ids. :meth:`NTM.encode` is called once at each such entry
point: labels and ``None`` pass through (a label model is exactly what it
always was), token ids become a :class:`~ntm.conditioning.condition.Condition`
through :attr:`NTM.condition_encoder`, and ``None`` on a model with an encoder
is its learned null condition. Everything below the entry points (transport,
prediction, the losses) receives the encoded condition.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ntm.conditioning.base import ConditionEncoder
from ntm.conditioning.condition import Cond, Condition
from ntm.distributions import Distribution
from ntm.forward import FORWARD_PROCESSES, MarkovConfig, MarkovProcess
from ntm.nn.init import reset
from ntm.predictors import PREDICTORS, Predictor, TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS, TarFlowConfig, Transporter
from ntm.registry import ComponentConfig


class NTMConfig(ComponentConfig):
    transporter: TRANSPORTERS.field() = TarFlowConfig()
    """Invertible per-level map x -> u."""
    predictor: PREDICTORS.field() = TransformerPredictorConfig()
    """Predictor of u_{k-1} from u_k (a distribution: Gaussian, or its head's)."""
    process: FORWARD_PROCESSES.field() = MarkovConfig()
    """Markov forward process: schedule and the step counts K trained for."""

    def build(self, dims: ModelDims, condition_encoder: ConditionEncoder | None = None) -> "NTM":
        """The model for ``dims``; ``condition_encoder`` (built by a text conditioner's config) joins it as a
        trained part when the conditions need encoding."""
        return NTM(self.transporter.build(dims), self.predictor.build(dims), self.process.build(), dims,
                   condition_encoder=condition_encoder)


@dataclasses.dataclass
class StepTerms:
    """Per-step pieces of a trajectory's likelihood (``K`` steps, batch ``B``)."""

    u: Tensor
    """``(K + 1, B, N, d)``: ``u_0 .. u_K`` (``u_K = x_{t_K}``)."""
    logdet: Tensor
    """``(K, B)``: ``log|det df(x_{t_k})/dx|`` for ``k < K``."""
    distribution: Distribution
    """Leading dims ``(K, B)``: entry ``k - 1`` is the predictor's distribution over ``u_{k-1}`` from level ``k``."""

    def step_nlls(self) -> Tensor:
        """``l_1 .. l_K`` in nats, ``(B, K)``."""
        nll = self.distribution.nll_sum(self.u[:-1], batch_dims=2) - self.logdet  # (K, B)
        return nll.transpose(0, 1)


class NTM(nn.Module):
    def __init__(
        self, transporter: Transporter, predictor: Predictor, process: MarkovProcess, dims: ModelDims,
        condition_encoder: ConditionEncoder | None = None,
    ) -> None:
        super().__init__()
        self.transporter = transporter
        self.predictor = predictor
        self.process = process
        self.dims = dims
        self.condition_encoder = condition_encoder
        """Token ids -> :class:`Condition` (a text conditioner's); ``None`` for class labels and no condition."""

    def forward(
        self, x: Tensor, cond: Cond, objective, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training entry point: ``objective(self, x, self.encode(cond), generator)`` -> ``(loss, metrics)``.

        Routing the loss (and the condition encoder) through ``forward`` lets DDP
        and FSDP wrappers see every use of the weights during training.
        """
        out = objective(self, x, self.encode(cond, x.shape[0]), generator)
        return out.loss, out.metrics

    # -- conditions -------------------------------------------------------
    def encode(self, cond, batch: int | None = None) -> Cond:
        """The condition input of an entry point -> what the components read.

        ``None`` -> ``None``, or the learned null of ``batch`` rows when the model
        has a condition encoder; ``(B,)`` labels -> unchanged; ``(B, L)`` token
        ids -> ``condition_encoder(ids)``; a :class:`Condition` -> unchanged
        (encoding twice is harmless).
        """
        if cond is None:
            if self.condition_encoder is None or batch is None:
                return None
            return self.condition_encoder.null(batch)
        if isinstance(cond, Condition) or cond.ndim == 1:
            return cond
        if self.condition_encoder is None:
            raise TypeError(f"this model has no condition encoder for a condition of shape {tuple(cond.shape)} "
                            "(class labels are (B,); token ids need a text conditioner's model)")
        return self.condition_encoder(cond)

    def null_condition(self, batch: int, device: torch.device | None = None) -> Cond:
        """The condition classifier-free guidance contrasts with: ``batch`` null labels ``(B,)`` for a
        class-conditional model, the encoder's learned null :class:`Condition` for a model with a condition
        encoder, ``None`` for a model without any condition."""
        if self.condition_encoder is not None:
            return self.condition_encoder.null(batch)
        if self.dims.cond_dim:
            raise ValueError("a model with encoded conditions (dims.cond_dim > 0) needs a condition encoder "
                             "for its null condition")
        if self.dims.num_classes:
            if device is None:
                device = next(iter(self.parameters())).device
            return torch.full((batch,), self.dims.num_classes, dtype=torch.long, device=device)
        return None

    def reset_parameters(self) -> None:
        """Re-draw the initial weights as construction drew them (meta-device init: :mod:`ntm.nn.init`): the
        condition encoder's first (it is built before the model, an argument of :meth:`NTMConfig.build`), then the
        transporter's and the predictor's."""
        if self.condition_encoder is not None:
            reset(self.condition_encoder)
        reset(self.transporter)
        reset(self.predictor)

    def _components(self) -> list[tuple[str, nn.Module]]:
        parts = [("transporter", self.transporter), ("predictor", self.predictor)]
        if self.condition_encoder is not None:
            parts.append(("condition encoder", self.condition_encoder))
        return parts

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own: the transporter's, the predictor's, then the
        condition encoder's (if any)."""
        return [unit for _, part in self._components() for unit in part.shard_units()]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters: the transporter's, the predictor's, then the condition
        encoder's (``condition_encoder``, if the model has one).

        The trainer gives each group its own learning-rate scale and freeze
        (``train.lr_scale``, ``train.freeze_steps``). A group name declared by
        two components is a ``ValueError``.
        """
        groups: dict[str, list[nn.Parameter]] = {}
        owner: dict[str, str] = {}
        for role, part in self._components():
            for name, params in part.param_groups().items():
                if name in groups:
                    raise ValueError(f"parameter group {name!r} is declared by both the {owner[name]} "
                                     f"and the {role} ({type(part).__name__})")
                groups[name], owner[name] = params, f"{role} ({type(part).__name__})"
        return groups

    # -- transport --------------------------------------------------------
    def transport_levels(self, x_levels: Tensor, times: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """``f`` on ``L`` levels at once: ``(L, B, N, d)``, ``(L,)`` -> ``u (L, B, N, d)``, ``logdet (L, B)``."""
        n_levels, b = x_levels.shape[:2]
        t = times.to(x_levels.dtype).repeat_interleave(b)
        c = None if cond is None else cond.repeat(n_levels)
        u, logdet = self.transporter(x_levels.flatten(0, 1), t, c)
        return u.unflatten(0, (n_levels, b)), logdet.unflatten(0, (n_levels, b))

    def decode_levels(self, u_levels: Tensor, times: Tensor, cond: Tensor | None) -> Tensor:
        """``f^{-1}`` on ``L`` levels at once (batched over levels)."""
        n_levels, b = u_levels.shape[:2]
        t = times.to(u_levels.dtype).repeat_interleave(b)
        c = None if cond is None else cond.repeat(n_levels)
        return self.transporter.inverse(u_levels.flatten(0, 1), t, c).unflatten(0, (n_levels, b))

    # -- likelihood -------------------------------------------------------
    def step_terms(self, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> "StepTerms":
        """The pieces of the per-step NLLs of one trajectory: u-levels, log-dets and predicted distributions.

        ``trajectory`` is ``(K + 1, B, N, d)`` = ``x_{t_0} .. x_{t_K}``; ``times`` is ``(K + 1,)``.
        """
        num_steps = times.numel() - 1
        u_lo, logdet = self.transport_levels(trajectory[:num_steps], times[:num_steps], cond)
        u = torch.cat([u_lo, trajectory[num_steps:]], dim=0)  # u_K = x_{t_K}
        g = self.predictor.forward_trajectory(u[1:], times, cond)  # entry k-1 predicts u_{k-1}
        return StepTerms(u, logdet, g)

    def step_nlls(self, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """Exact per-step NLLs ``l_1 .. l_K`` in nats, ``(B, K)``, end-to-end over one trajectory (docs/math.md §5)."""
        return self.step_terms(trajectory, times, cond).step_nlls()

    def pair_nll(
        self, x_s: Tensor, x_t: Tensor, s: Tensor, t: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """``l_k`` for one consecutive pair per example (Markov predictors), ``(B,)`` nats.

        ``s < t`` are ``(B,)``; examples with ``t = 1`` use ``u_t = x_t`` (no transporter at noise).
        """
        if not self.predictor.markov:
            raise ValueError("pair-wise NLL needs a Markov predictor; the trajectory predictor needs every noisier level")
        u_s, logdet = self.transporter(x_s, s, cond)
        u_t, _ = self.transporter(x_t, t, cond)
        at_noise = (t >= 1).reshape(-1, *([1] * (x_t.ndim - 1)))
        u_t = torch.where(at_noise, x_t, u_t)
        g = self.predictor(u_t, t, s, cond)
        return g.nll_sum(u_s) - logdet

    def trajectory_nll(
        self, x: Tensor, num_steps: int, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample a forward trajectory of clean tokens ``x`` and score it: ``(step_nlls (B, K), trajectory, times)``."""
        times = self.process.times(num_steps, device=x.device, dtype=x.dtype)
        trajectory = self.process.sample_trajectory(x, times, generator)
        return self.step_nlls(trajectory, times, cond), trajectory, times
