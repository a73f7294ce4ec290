"""Optimisation and run settings of the training loop."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NoReturn

import pydantic

from ntm.registry import ComponentConfig


class FrozenDict(dict):
    """A read-only, hashable ``dict``: how a config holds a mapping (configs are frozen and hashable,
    and the command line's mirror dataclasses take only hashable defaults)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a config's mapping is read-only; build a new config with replace()")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict]]:  # copy and pickle without __setitem__
        return type(self), (dict(self),)


def _group_lr_scales(value: dict[str, float]) -> FrozenDict:
    bad = {k: v for k, v in value.items() if not 0 < v < math.inf}
    if bad:
        raise ValueError(f"learning-rate scales must be finite and > 0, got {', '.join(f'{k}={v}' for k, v in bad.items())}")
    return FrozenDict(value)


def _group_freeze_steps(value: dict[str, int]) -> FrozenDict:
    bad = {k: v for k, v in value.items() if v < 0}
    if bad:
        raise ValueError(f"freeze steps must be >= 0, got {', '.join(f'{k}={v}' for k, v in bad.items())}")
    return FrozenDict(value)


class TrainConfig(ComponentConfig):
    steps: int = pydantic.Field(2000, ge=1)
    """Optimizer steps to train for."""
    batch_size: int = pydantic.Field(128, ge=1)
    """Global batch size (all ranks and micro-batches together)."""
    grad_accum: int = pydantic.Field(1, ge=1)
    """Micro-batches per optimizer step (each rank splits its share into this many)."""
    lr: float = pydantic.Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas, each in [0, 1)."""
    weight_decay: float = pydantic.Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    warmup_steps: int | float = pydantic.Field(100, ge=0)
    """Linear warm-up before the cosine decay: a step count (an int; more than ``steps`` is clamped to
    ``steps``) or a fraction of ``steps`` (a float in (0, 1), rounded to the nearest step)."""
    min_lr_ratio: float = pydantic.Field(0.1, ge=0, le=1)
    """Cosine decay floor as a fraction of the peak learning rate."""
    lr_scale: Annotated[dict[str, float], pydantic.AfterValidator(_group_lr_scales)] = FrozenDict()
    """Learning-rate multiplier (> 0) per parameter group of the model, e.g. 'backbone 0.1 scale 10'
    (groups: the model's param_groups(), e.g. transporter, predictor; posterior predictor: backbone, scale;
    a caption conditioner's encoder: condition_encoder)."""
    freeze_steps: Annotated[dict[str, int], pydantic.AfterValidator(_group_freeze_steps)] = FrozenDict()
    """Initial steps with learning rate 0 per parameter group, e.g. 'backbone 500'; the group then
    continues on the schedule at that step (no second warm-up)."""
    grad_clip: float | None = pydantic.Field(1.0, gt=0)
    """Clip the global gradient norm to this value (None: no clipping)."""
    ema_decay: float = pydantic.Field(0.999, ge=0, le=1)
    """EMA decay of the weights that sampling and evaluation use."""
    seed: int = 0
    """Seed of initialisation, data order and every noise draw."""
    log_every: int = pydantic.Field(25, ge=1)
    """Steps between scalar logs."""
    sample_every: int = pydantic.Field(500, ge=0)
    """Steps between sample grids written to tensorboard and samples/ (0: never)."""
    checkpoint_every: int = pydantic.Field(250, ge=1)
    """Steps between checkpoints (the final step is always saved)."""
    keep_checkpoints: int = pydantic.Field(2, ge=1)
    """How many recent checkpoints to keep."""
    checkpoint_format: Literal["dcp", "file"] = "dcp"
    """'dcp': a directory per checkpoint, each rank writing its own shards (torch.distributed.checkpoint;
    resumes at any world size); 'file': one file of the gathered state, written by rank 0. Both load everywhere."""
    async_checkpoint: bool = False
    """Write dcp checkpoints in the background while training goes on (a host-memory copy of each rank's
    shards meanwhile); at most one save in flight."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train ('auto': CUDA when available)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Autocast precision on CUDA (likelihood math stays float32); CPU always runs float32."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    parallel: Literal["fsdp", "ddp"] = "fsdp"
    """Strategy under torchrun: FSDP2 (fully_shard per unit the model declares, e.g. its transformer blocks,
    then the root) or DDP."""
    threads: int | None = pydantic.Field(None, ge=1)
    """torch intra-op threads (None: torch's default)."""
    mixed_precision: Literal["none", "bf16"] = "none"
    """FSDP2 parameter precision under torchrun (parallel fsdp): 'bf16' gathers and computes with bfloat16 copies of
    the float32 weights and reduces gradients in float32 (the likelihood math stays float32); 'none': float32. One
    process runs float32 whatever it says; DDP refuses 'bf16'."""
    reshard_after_forward: bool | Literal["auto"] = "auto"
    """FSDP2: free a unit's gathered weights after its forward, gathering them again for backward (True: least
    memory), or keep them until backward (False: less communication); 'auto': every unit but the last of the
    model's shard_units(), whose weights backward needs first. The root keeps its own weights gathered."""
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    """Recompute activations in backward instead of keeping them, per shard unit (e.g. transformer block): 'full' every
    unit, 'selective' every second one (the first, third, ...), 'none'. Same numbers (bit-identical on CPU), less
    memory, about one more forward pass of compute; with or without torchrun."""
    adamw: Literal["auto", "for-loop", "foreach", "fused"] = "auto"
    """AdamW implementation: 'auto' is torch's own choice for the parameters' device (foreach on CUDA, for-loop on
    CPU); 'fused' is the fastest on CUDA. They agree up to float rounding."""
    mesh: tuple[int, int] | None = None
    """HSDP under torchrun (parallel fsdp): (replicate, shard), e.g. (nodes, GPUs per node): weights sharded over
    the shard ranks and replicated over the replicate groups (gradients reduce-scattered within a group, then
    all-reduced across); replicate x shard must equal the world size. None: every rank shards (FSDP)."""
    meta_init: bool = False
    """Build the model on the meta device, shard it, then draw each rank's shard of the initial weights (the same
    weights an ordinary build gives for the same seed; components re-draw through ntm.nn.init): no device ever holds
    the whole model. Not combinable with init (weights from another run)."""

    @pydantic.field_validator("warmup_steps")
    @classmethod
    def _warmup_fraction(cls, value: int | float) -> int | float:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a float is a fraction of train.steps and must be in (0, 1), got {value}; "
                             "give a step count as an integer")
        return value

    @pydantic.field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        bad = [f"{b:g}" for b in value if not 0 <= b < 1]
        if bad:
            raise ValueError(f"AdamW betas must each be in [0, 1), got {', '.join(bad)}")
        return value

    @pydantic.field_validator("mesh")
    @classmethod
    def _mesh_positive(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"a mesh is (replicate, shard) rank counts >= 1, got {value}")
        return value

    @pydantic.model_validator(mode="after")
    def _fsdp_only(self) -> "TrainConfig":
        if self.parallel == "ddp":
            fsdp_only = [f"mixed_precision {self.mixed_precision}" if self.mixed_precision != "none" else None,
                         f"mesh {self.mesh}" if self.mesh is not None else None]
            given = [s for s in fsdp_only if s]
            if given:
                raise ValueError(f"{' and '.join(given)} need parallel fsdp (DDP replicates float32 weights)")
        return self

    @property
    def warmup_count(self) -> int:
        """Warm-up steps the loop uses: the fraction resolved, a count clamped to ``steps``."""
        if isinstance(self.warmup_steps, float):
            return round(self.warmup_steps * self.steps)
        return min(self.warmup_steps, self.steps)


# Fields that may change when a run resumes (more steps, other logging cadence, another device, another checkpoint
# format, another split of the global batch over ranks and micro-batches, FSDP or DDP).
RESUMABLE_FIELDS = frozenset(
    {
        "train.steps",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.checkpoint_format",
        "train.async_checkpoint",
        "train.grad_accum",
        "train.parallel",
        "train.device",
        "train.threads",
        "train.mixed_precision",
        "train.reshard_after_forward",
        "train.activation_checkpointing",
        "train.adamw",
        "train.mesh",
        "train.meta_init",
        "run_dir",
        "init",
        "eval",
        "sampler",
        "denoiser",
    }
)
