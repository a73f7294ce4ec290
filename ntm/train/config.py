"""Optimisation and run settings of the training loop."""

from __future__ import annotations

from typing import Literal

import pydantic

from registry import ComponentConfig


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
    """AdamW betas."""
    weight_decay: float = pydantic.Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    warmup_steps: int = pydantic.Field(100, ge=0)
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = pydantic.Field(0.1, ge=0, le=1)
    """Cosine decay floor as a fraction of the peak learning rate."""
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train ('auto': CUDA when available)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Autocast precision on CUDA (likelihood math stays float32); CPU always runs float32."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    parallel: Literal["fsdp", "ddp"] = "fsdp"
    """Strategy under torchrun: FSDP2 (fully_shard per transformer block, then the root) or DDP."""
    threads: int | None = pydantic.Field(None, ge=1)
    """torch intra-op threads (None: torch's default)."""
    fail_at_step: int | None = pydantic.Field(None, ge=0)
    """Testing aid: make the loss non-finite at this step to exercise the non-finite guard."""

    @pydantic.model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self


# Fields that may change when a run resumes (more steps, other logging cadence, another device).
RESUMABLE_FIELDS = frozenset(
    {
        "train.steps",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.device",
        "train.threads",
        "train.fail_at_step",
        "run_dir",
        "eval",
        "sampler",
        "denoiser",
    }
)
