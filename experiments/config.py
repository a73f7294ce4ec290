"""The experiment config: one config per component slot, each a tyro subcommand."""

from __future__ import annotations

import pydantic

from ntm.conditioning import CONDITIONERS, ClassLabelConfig
from ntm.data import DATA_SOURCES, DigitsConfig
from ntm.denoisers import DENOISERS, NoDenoiserConfig
from ntm.forward import FORWARD_PROCESSES, MarkovConfig
from ntm.losses import LOSSES, EndToEndConfig
from ntm.model import NTMConfig
from ntm.predictors import PREDICTORS, TransformerPredictorConfig
from ntm.samplers import SAMPLERS, AncestralConfig
from ntm.train.config import TrainConfig
from ntm.transporters import TRANSPORTERS, TarFlowConfig
from registry import ComponentConfig


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


class Experiment(ComponentConfig):
    """A whole run: data, model components, objective, sampling and training."""

    name: str = "custom"
    """Name of the run (the default run directory is runs/<name>)."""
    run_dir: str | None = None
    """Where checkpoints, logs and samples go (None: runs/<name>)."""
    data: DATA_SOURCES.field() = DigitsConfig()
    """Data source."""
    patch_size: int = pydantic.Field(1, ge=1)
    """Image patch size p: tokens carry C*p*p channels (ignored for 2-D points)."""
    transporter: TRANSPORTERS.field() = TarFlowConfig()
    """Invertible per-level map x -> u."""
    predictor: PREDICTORS.field() = TransformerPredictorConfig()
    """Gaussian predictor of u_{k-1} from u_k."""
    process: FORWARD_PROCESSES.field() = MarkovConfig()
    """Markov forward process: schedule and the step counts K trained for."""
    loss: LOSSES.field() = EndToEndConfig()
    """Training objective."""
    conditioner: CONDITIONERS.field() = ClassLabelConfig()
    """How labels become the training condition (condition dropout)."""
    sampler: SAMPLERS.field() = AncestralConfig()
    """Sampler used for previews, `ntm sample` and evaluation."""
    denoiser: DENOISERS.field() = NoDenoiserConfig()
    """Denoiser applied to the sampled x_{t_0}."""
    train: TrainConfig = TrainConfig()
    """Optimisation and run settings."""
    eval: EvalConfig = EvalConfig()
    """Evaluation settings."""

    @pydantic.model_validator(mode="after")
    def _compatible(self) -> "Experiment":
        markov = PREDICTORS.get(PREDICTORS.name_of(self.predictor)).cls.markov
        if LOSSES.name_of(self.loss) == "pair-wise" and not markov:
            raise ValueError("loss pair-wise needs a Markov predictor; predictor 'trajectory' needs end-to-end")
        if self.eval.steps is not None:
            unknown = sorted(set(self.eval.steps) - set(self.process.steps))
            if unknown:
                raise ValueError(f"eval.steps {unknown} were not trained (process.steps = {list(self.process.steps)})")
        return self

    @property
    def model(self) -> NTMConfig:
        return NTMConfig(transporter=self.transporter, predictor=self.predictor, forward_process=self.process)

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"
