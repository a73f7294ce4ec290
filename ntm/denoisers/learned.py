"""The learned one-pass denoiser (docs/math.md §8): ``D_phi(u_0, c) -> x_hat``, distilled from §7.

``D_phi`` is a non-causal token transformer over the sampler's cleanest latent
level ``u_0``, conditioned on the time ``t_0`` and the condition: the class
label (the null label when there is none), or the Condition the NTM's
condition encoder makes of a caption (``D_phi`` has no encoder of its own: it
reads the teacher's). It is trained by regression on the §7
score-denoised estimate, which a frozen, trained NTM computes on forward
trajectories of real data (:class:`Distillation`, :class:`DistillationLoss`,
driven by ``ntm distill``). Sampling with it runs the predictor over the K
steps and calls ``D_phi`` once: no transporter inverse, no backward pass.

Where the weights live: ``ntm distill --run RUN`` writes ``RUN/denoiser/``
(``config.json``, ``checkpoints/``, ``final.json``); a checkpoint's config
holds the denoiser's architecture (``network``) and token geometry
(``dims``), its EMA weights are ``D_phi``'s under the prefix ``net.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import torch
from torch import Tensor, nn

from ntm.conditioning.condition import Cond, encode_condition
from ntm.denoisers.base import DENOISERS, Denoiser, DenoiserConfig
from ntm.denoisers.score import ScoreDenoiser
from ntm.forward import interpolant as I
from ntm.losses.base import Loss, LossOutput
from ntm.nn.backbone import TokenTransformer
from ntm.spec import ModelDims
from ntm.train.checkpoint import CheckpointManager, is_checkpoint_dir, read_sampling_state, sampling_state_dict
from ntm.train.errors import CheckpointError

DENOISER_DIR = "denoiser"
"""A run's distilled denoiser lives in ``<run>/denoiser/``."""
PREFIX = "net."
"""``D_phi``'s weights in a distillation checkpoint are the :class:`Distillation` module's ``net.*``."""


class DenoiserNotTrained(CheckpointError):
    """A learned denoiser has no distilled weights (yet)."""


class LearnedDenoiserConfig(DenoiserConfig):
    width: int = pydantic.Field(128, ge=8)
    """Hidden width of D."""
    depth: int = pydantic.Field(4, ge=1)
    """Transformer layers of D."""
    num_heads: int = pydantic.Field(4, ge=1)
    """Attention heads (must divide width)."""
    mlp_ratio: float = pydantic.Field(4.0, gt=0)
    """MLP hidden size as a multiple of width."""
    weights: str | None = None
    """Distilled weights: a directory written by `ntm distill` (<run>/denoiser) or one of its checkpoint files;
    None: <run>/denoiser of the run being sampled. Loaded weights keep the architecture they were distilled with."""

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> "LearnedDenoiserConfig":
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")
        return self

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the network (everything but ``weights``), as saved with distilled weights."""
        return self.model_dump(mode="json", exclude={"weights"})

    def network(self, dims: ModelDims) -> "DenoiserNet":
        """A fresh ``D_phi`` for models of ``dims`` (equal to ``u_0 / alpha(t_0)`` until trained)."""
        return DenoiserNet(self, dims)

    def for_run(self, run_dir: Path) -> "LearnedDenoiserConfig":
        return self if self.weights is not None else self.replace(weights=str(Path(run_dir) / DENOISER_DIR))

    def build(self) -> "LearnedDenoiser":
        return LearnedDenoiser(self)


class DenoiserNet(nn.Module):
    """``x_hat = u_0 / alpha(t_0) + T(u_0; t_0, c)``, ``T`` a full-attention :class:`TokenTransformer`.

    Why a residual on the rescaled ``u_0`` rather than a bare zero-initialised
    output: the §7 target is ``x_{t_0} / alpha(t_0)`` plus a Tweedie correction
    of the order of the noise floor, and ``x_{t_0} = f^{-1}(u_0)`` with a
    transporter that starts at the identity (TarFlow's blocks are
    zero-initialised). So the skip alone is the rescaled-sample denoiser,
    exact for the identity transporter at zero correction, and ``T`` only
    learns ``f^{-1} - id`` plus the correction; a bare output starts at
    ``x_hat = 0`` and must first learn to copy its input. On ``digits-ntm``
    after 300 training steps a fresh net's MSE to the targets is 0.11 against
    0.72 for a zero output. ``T``'s read-out is zero-initialised (adaLN-Zero),
    so a fresh net is exactly the skip.
    """

    def __init__(self, config: LearnedDenoiserConfig, dims: ModelDims) -> None:
        super().__init__()
        self.dims = dims
        self.body = TokenTransformer(
            dims.token_dim, dims.num_tokens, dims.token_dim, width=config.width, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=dims.num_classes, num_times=1,
            cond_dim=dims.cond_dim, cond_len=dims.cond_len,
        )

    def forward(self, u0: Tensor, t0: Tensor, cond: Cond = None) -> Tensor:
        """``u0`` ``(B, N, d)``, ``t0`` ``(B,)``, ``cond`` ``(B,)`` labels, an encoded Condition or ``None``
        (null label) -> ``(B, N, d)``."""
        context = self.body.context((t0,), cond)[:, None]
        skip = u0 / I.alpha(t0).to(u0.dtype).reshape(-1, *([1] * (u0.ndim - 1)))
        return skip + self.body(u0, context, cond=cond).to(u0.dtype)


@DENOISERS.register("learned", LearnedDenoiserConfig)
class LearnedDenoiser(Denoiser):
    """``x_hat = D_phi(u_0, c)``: one network pass on ``u_0``, under ``torch.no_grad``, nothing decoded.

    ``net`` given: use it as it is (e.g. during distillation); otherwise the
    weights are loaded from ``config.weights`` at once (a one-line
    :class:`~ntm.train.errors.CheckpointError` before any sampling when they
    are missing or do not fit).
    """

    needs_x_trajectory = False

    def __init__(self, config: LearnedDenoiserConfig | None = None, net: DenoiserNet | None = None) -> None:
        self.config = config or LearnedDenoiserConfig()
        if net is None:
            if self.config.weights is None:
                raise DenoiserNotTrained("the learned denoiser has no weights: distill one with `ntm distill --run RUN` "
                                         "(or set denoiser.weights)")
            net = load_distilled(self.config.weights)
        self.net = net.eval()

    @torch.no_grad()
    def from_u0(self, model: nn.Module, u0: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        dims = getattr(model, "dims", None)
        if dims is not None and dims != self.net.dims:
            raise CheckpointError(f"the learned denoiser was distilled for {self.net.dims}, the model has {dims}")
        net = self.net.to(u0.device)
        cond = encode_condition(model, cond, u0.shape[0])  # the NTM's encoder: token ids -> Condition
        return net(u0, times[0].to(u0.dtype).expand(u0.shape[0]), cond)

    @torch.no_grad()
    def __call__(self, model: nn.Module, trajectory: Tensor, times: Tensor, cond: Tensor | None = None) -> Tensor:
        """From the x-space trajectory: ``u_0 = f(x_{t_0})`` (one transporter pass), then :meth:`from_u0`."""
        cond = encode_condition(model, cond, trajectory.shape[1])
        u0, _ = model.transport_levels(trajectory[:1], times[:1], cond)
        return self.from_u0(model, u0[0], times, cond)


def distilled_config(config: LearnedDenoiserConfig, dims: ModelDims) -> dict[str, Any]:
    """The entries a distillation checkpoint's config must hold for :func:`load_distilled`."""
    geometry = {"num_tokens": dims.num_tokens, "token_dim": dims.token_dim, "num_classes": dims.num_classes}
    # encoded conditions only when present: configs of label and unconditional runs stay as they were (--resume)
    geometry.update({k: getattr(dims, k) for k in ("cond_dim", "cond_len") if getattr(dims, k)})
    return {"network": config.architecture(), "dims": geometry}


def load_distilled(path: str | Path) -> DenoiserNet:
    """``D_phi`` with its EMA weights from a distillation directory (newest checkpoint) or checkpoint file."""
    path = Path(path)
    if (path.is_dir() and not is_checkpoint_dir(path)) or not path.exists():
        checkpoint = CheckpointManager(path / "checkpoints").latest_path()
        if checkpoint is None:
            run = f" --run {path.parent}" if path.name == DENOISER_DIR else " --run RUN"
            raise DenoiserNotTrained(f"no distilled denoiser in {path} (no checkpoint); run `ntm distill{run}` first")
    else:
        checkpoint = path
    state = read_sampling_state(checkpoint, required=("config",))
    try:
        saved = state["config"]
        config = LearnedDenoiserConfig.model_validate(saved["network"])
        dims = ModelDims(**saved["dims"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {checkpoint} is not a distilled denoiser ({type(e).__name__}: {e})") from None
    net = config.network(dims)
    weights = {k[len(PREFIX):]: v for k, v in sampling_state_dict(state).items() if k.startswith(PREFIX)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise CheckpointError(f"checkpoint {checkpoint} does not fit its saved denoiser config: {first}") from None
    return net


# -- distillation ---------------------------------------------------------------------
class Distillation(nn.Module):
    """What ``ntm distill`` trains: ``D_phi`` (``net``) next to a frozen teacher NTM that makes the targets.

    ``net`` is the only submodule: the teacher is held outside the module tree,
    so the optimizer, the EMA, gradient clipping and checkpoints see ``D_phi``'s
    weights alone (the teacher's are not saved again); it still follows
    ``.to()``. Its parameters do not require gradients, and it stays in eval
    mode. Like :class:`~ntm.model.NTM`, ``forward`` runs the objective so the
    training loop (and DDP/FSDP) drive it unchanged.
    """

    def __init__(self, net: DenoiserNet, teacher: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.__dict__["teacher"] = teacher.requires_grad_(False).eval()

    @property
    def dims(self) -> ModelDims:
        return self.net.dims

    def _apply(self, fn, recurse: bool = True):
        self.__dict__["teacher"]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor, cond, objective: Loss,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``cond`` is the conditioner's input; the objective has the frozen teacher encode it."""
        out = objective(self, x, cond, generator)
        return out.loss, out.metrics


class DistillationLoss(Loss):
    """``mean (D_phi(u_0, c) - x_hat_score)^2`` per dimension, targets from the frozen teacher (§8).

    Per call: one K from ``steps``, a forward trajectory of the clean batch
    (§3), ``u_0 = f(x_{t_0})`` and the §7 estimate ``x_hat_score`` of the
    teacher, both in float32 or wider with autocast off (as sampling computes
    them). Metrics: ``mse`` and, for scale, ``mse_x_t0`` of the rescaled sample
    ``x_{t_0} / alpha(t_0)`` against the same target.
    """

    def __init__(self, steps: Sequence[int]) -> None:
        if not steps:
            raise ValueError("distillation needs at least one step count K")
        self.steps = tuple(steps)
        self.score = ScoreDenoiser()

    def targets(
        self, teacher: nn.Module, x: Tensor, cond: Tensor | None = None, generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(u_0, times, x_hat_score, x_{t_0})`` for clean tokens ``x`` (K drawn from ``steps`` unless given)."""
        if num_steps is None:
            device = generator.device if generator is not None else x.device
            pick = torch.randint(len(self.steps), (1,), generator=generator, device=device)
            num_steps = self.steps[int(pick)]
        dtype = torch.promote_types(next(teacher.parameters()).dtype, torch.float32)
        cond = self.encode(teacher, cond, x.shape[0])
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            times = teacher.process.times(num_steps, device=x.device, dtype=dtype)
            trajectory = teacher.process.sample_trajectory(x, times, generator)
            target = self.score(teacher, trajectory, times, cond).detach()
            with torch.no_grad():
                u0 = teacher.transport_levels(trajectory[:1], times[:1], cond)[0][0]
        return u0, times, target, trajectory[0]

    @staticmethod
    def encode(teacher: nn.Module, cond, batch: int) -> Cond:
        """The teacher's encoding of a condition input (frozen, float32 or wider, autocast off, as sampling
        computes it); labels and encoded conditions pass through."""
        with torch.autocast(next(teacher.parameters()).device.type, enabled=False), torch.no_grad():
            return encode_condition(teacher, cond, batch)

    def __call__(self, model: Distillation, x: Tensor, cond=None,
                 generator: torch.Generator | None = None) -> LossOutput:
        cond = self.encode(model.teacher, cond, x.shape[0])  # once: the targets and D_phi read the same condition
        u0, times, target, x_t0 = self.targets(model.teacher, x, cond, generator)
        pred = model.net(u0, times[0].expand(u0.shape[0]), cond)
        mse = (pred.float() - target.float()).square().mean()
        with torch.no_grad():
            rescaled = (x_t0 / I.alpha(times[0]) - target).square().mean()
        return LossOutput(mse, {"mse": mse.detach().double(), "mse_x_t0": rescaled.double()})


__all__ = [
    "DENOISER_DIR", "DenoiserNet", "DenoiserNotTrained", "Distillation", "DistillationLoss", "LearnedDenoiser",
    "LearnedDenoiserConfig", "distilled_config", "load_distilled",
]
