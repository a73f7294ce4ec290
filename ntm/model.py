"""NTM = transporter + predictor + forward process, nothing else (docs/math.md §5).

``u_k = f(x_{t_k}; t_k)`` for ``k < K`` and ``u_K = x_{t_K}``; step ``k`` has

    l_k = sum_d NLL(u_{k-1,d}; mu_k, sigma_k) - log|det df(x_{t_{k-1}})/dx|

with ``(mu_k, log sigma_k) = g(u_k; t_k, t_{k-1}, c)``. All tensors are
tokens ``(B, N, d)``; trajectories carry a leading level axis.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ntm.distributions import Gaussian, sum_except_batch
from ntm.forward import FORWARD_PROCESSES, MarkovConfig, MarkovProcess
from ntm.predictors import PREDICTORS, Predictor, TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS, TarFlowConfig, Transporter
from registry import ComponentConfig


class NTMConfig(ComponentConfig):
    transporter: TRANSPORTERS.field() = TarFlowConfig()
    """Invertible per-level map x -> u."""
    predictor: PREDICTORS.field() = TransformerPredictorConfig()
    """Gaussian predictor of u_{k-1} from u_k."""
    process: FORWARD_PROCESSES.field() = MarkovConfig()
    """Markov forward process: schedule and the step counts K trained for."""

    def build(self, dims: ModelDims) -> "NTM":
        return NTM(self.transporter.build(dims), self.predictor.build(dims), self.process.build(), dims)


@dataclasses.dataclass
class StepTerms:
    """Per-step pieces of a trajectory's likelihood (``K`` steps, batch ``B``)."""

    u: Tensor
    """``(K + 1, B, N, d)``: ``u_0 .. u_K`` (``u_K = x_{t_K}``)."""
    logdet: Tensor
    """``(K, B)``: ``log|det df(x_{t_k})/dx|`` for ``k < K``."""
    gaussian: Gaussian
    """``(K, B, N, d)``: entry ``k - 1`` is the predictor's Gaussian over ``u_{k-1}`` from level ``k``."""

    def step_nlls(self) -> Tensor:
        """``l_1 .. l_K`` in nats, ``(B, K)``."""
        nll = sum_except_batch(self.gaussian.nll(self.u[:-1]), batch_dims=2) - self.logdet  # (K, B)
        return nll.transpose(0, 1)


class NTM(nn.Module):
    def __init__(self, transporter: Transporter, predictor: Predictor, process: MarkovProcess, dims: ModelDims) -> None:
        super().__init__()
        self.transporter = transporter
        self.predictor = predictor
        self.process = process
        self.dims = dims

    def forward(
        self, x: Tensor, cond: Tensor | None, objective, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training entry point: ``objective(self, x, cond, generator)`` -> ``(loss, metrics)``.

        Routing the loss through ``forward`` lets DDP and FSDP wrappers see
        every use of the weights during training.
        """
        out = objective(self, x, cond, generator)
        return out.loss, out.metrics

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own: the transporter's, then the predictor's."""
        return self.transporter.shard_units() + self.predictor.shard_units()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters: the transporter's, then the predictor's.

        The trainer gives each group its own learning-rate scale and freeze
        (``train.lr_scale``, ``train.freeze_steps``). A group name declared by
        both components is a ``ValueError``.
        """
        groups = dict(self.transporter.param_groups())
        for name, params in self.predictor.param_groups().items():
            if name in groups:
                raise ValueError(f"parameter group {name!r} is declared by both the transporter "
                                 f"({type(self.transporter).__name__}) and the predictor ({type(self.predictor).__name__})")
            groups[name] = params
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
        """The pieces of the per-step NLLs of one trajectory: u-levels, log-dets and predicted Gaussians.

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
        return sum_except_batch(g.nll(u_s)) - logdet

    def trajectory_nll(
        self, x: Tensor, num_steps: int, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample a forward trajectory of clean tokens ``x`` and score it: ``(step_nlls (B, K), trajectory, times)``."""
        times = self.process.times(num_steps, device=x.device, dtype=x.dtype)
        trajectory = self.process.sample_trajectory(x, times, generator)
        return self.step_nlls(trajectory, times, cond), trajectory, times
