"""The experiment config: one config per component slot, each a tyro subcommand."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic

from ntm.autoencoders import AUTOENCODERS, IdentityAutoencoderConfig
from ntm.conditioning import CONDITIONERS, ClassLabelConfig
from ntm.data import DATA_SOURCES, DigitsConfig
from ntm.denoisers import DENOISERS, NoDenoiserConfig
from ntm.losses import LOSSES, EndToEndConfig
from ntm.model import NTMConfig
from ntm.samplers import SAMPLERS, AncestralConfig
from ntm.train.config import TrainConfig
from ntm.train.init import InitConfig
from ntm.registry import ComponentConfig, Inline


class EvalConfig(ComponentConfig):
    num_examples: int | None = pydantic.Field(None, ge=1)
    """Held-out examples scored for the NLL (None: the whole held-out split)."""
    batch_size: int = pydantic.Field(500, ge=1)
    """Evaluation batch size."""
    steps: tuple[int, ...] | None = None
    """Step counts K to evaluate (None: every K the model was trained for)."""
    grid_columns: int = pydantic.Field(10, ge=1)
    """Samples per row of the sample grid (one row per class for conditional image data)."""
    num_points: int = pydantic.Field(4000, ge=1)
    """Samples drawn for a 2-D scatter picture."""
    seed: int = 1234
    """Seed of evaluation trajectories and samples."""
    sample_batch: int = pydantic.Field(1024, ge=1)
    """Most samples drawn in one sampler call (ntm sample, previews, final samples, ntm.Model.sample): a larger
    request is drawn in chunks of this many rows, so any count fits in memory. Chunk i is seeded from (seed, i) and
    chunk 0 with the seed itself: a request of up to this many rows is one call, as before chunking; the rows
    beyond the first chunk depend on this value, so keep it to reproduce them (ntm.experiments.build.sample)."""


_MODEL_FIELDS = ("transporter", "predictor", "process")


class Experiment(ComponentConfig):
    """A whole run: data, the model, objective, sampling and training.

    The model's slots (transporter, predictor, process) are declared once, in
    :class:`ntm.model.NTMConfig`; on the command line they appear at the top
    level (``transporter:identity``, ``--predictor.depth 4``).
    """

    name: str = "custom"
    """Name of the run (the default run directory is runs/<name>)."""
    run_dir: str | None = None
    """Where checkpoints, logs and samples go (None: runs/<name>)."""
    data: DATA_SOURCES.field() = DigitsConfig()
    """Data source."""
    autoencoder: AUTOENCODERS.field() = IdentityAutoencoderConfig()
    """Images <-> latents: identity trains on pixels; pretrained/conv train the model on a trained autoencoder's
    latents (docs/latent.md)."""
    patch_size: int = pydantic.Field(1, ge=1)
    """Image patch size p: tokens carry C*p*p channels (ignored for 2-D points)."""
    model: Annotated[NTMConfig, Inline()] = NTMConfig()
    """The model: transporter, predictor and forward process."""
    loss: LOSSES.field() = EndToEndConfig()
    """Training objective."""
    conditioner: CONDITIONERS.field() = ClassLabelConfig()
    """How the batch's labels or captions become the model's condition (condition dropout; a text encoder)."""
    sampler: SAMPLERS.field() = AncestralConfig()
    """Sampler used for previews, `ntm sample` and evaluation."""
    denoiser: DENOISERS.field() = NoDenoiserConfig()
    """Denoiser applied to the sampled x_{t_0}."""
    train: TrainConfig = TrainConfig()
    """Optimisation and run settings."""
    eval: EvalConfig = EvalConfig()
    """Evaluation settings."""
    init: InitConfig | None = None
    """Start from another run's weights (set by `ntm finetune`; applied on a fresh start, never on resume)."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Read configs saved before the model's slots moved under ``model`` (and ``train.fail_at_step`` went)."""
        if isinstance(data, dict) and "model" not in data and any(k in data for k in _MODEL_FIELDS):
            model = {k: data[k] for k in _MODEL_FIELDS if k in data}
            data = {**{k: v for k, v in data.items() if k not in _MODEL_FIELDS}, "model": model}
        if isinstance(data, dict) and isinstance(data.get("train"), dict) and data["train"].get("fail_at_step", 0) is None:
            data = {**data, "train": {k: v for k, v in data["train"].items() if k != "fail_at_step"}}
        return data

    @pydantic.model_validator(mode="after")
    def _compatible(self) -> "Experiment":
        # every component that depends on the model checks it (e.g. flow matching needs the identity transporter)
        for slot in (self.loss, self.sampler, self.denoiser, self.conditioner):
            check = getattr(slot, "check_model", None)
            if check is not None:
                check(self.model)
        if getattr(self.sampler, "guidance", 0.0) and CONDITIONERS.name_of(self.conditioner) == "none":
            raise ValueError(f"sampler.guidance is {self.sampler.guidance:g} but conditioner:none makes an unconditional "
                             "model; set --sampler.guidance 0 or condition the model")
        if self.eval.steps is not None:
            unknown = sorted(set(self.eval.steps) - set(self.model.process.steps))
            if unknown:
                raise ValueError(f"eval.steps {unknown} were not trained (process.steps = {list(self.model.process.steps)})")
        return self

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"
