"""``ntm finetune --from RUN_OR_CHECKPOINT [PRESET] [overrides]``: an NTM started from a flow-matching teacher.

The teacher is a run (or checkpoint) whose model is the flow-matching
baseline: identity transporter and ``predictor:posterior`` over a velocity
x-hat model. The finetuned experiment is a ``*-finetune`` preset with the
teacher's data, patching, conditioning and velocity network; its ``init``
copies the teacher's backbone (EMA weights) into the predictor *and* into its
frozen copy, so at step 0 the model is exactly the teacher's Gaussian-posterior
sampler (docs/math.md §9). Everything else is a run like any other.

    ntm train digits-flow-matching                                   # the teacher
    ntm finetune --from runs/digits-flow-matching                    # digits-finetune, 600 steps
    ntm finetune --from runs/digits-flow-matching --loss.align-schedule linear --process.steps 2 4 8
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from ntm.experiments.core import UsageError
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.predictors import PREDICTORS, PosteriorPredictorConfig
from ntm.train.checkpoint import is_checkpoint_dir, load_checkpoint
from ntm.train.init import InitConfig, checkpoint_path
from ntm.transporters import TRANSPORTERS, IdentityConfig
from ntm.registry.cli import config_error


TEACHER_MAPPING = {"predictor.xhat.": ("predictor.xhat.", "predictor.reference.")}
"""The teacher's velocity network initialises the finetuned backbone and its frozen copy."""
ENCODER_MAPPING = {"condition_encoder.": ("condition_encoder.",)}
"""A teacher with a condition encoder (captions) also initialises the finetuned model's encoder."""


def teacher_mapping(teacher: Experiment) -> dict[str, tuple[str, ...]]:
    """:data:`TEACHER_MAPPING`, plus :data:`ENCODER_MAPPING` when the teacher's conditioner builds an encoder."""
    encodes = getattr(teacher.conditioner, "model_dims", lambda n: {})(0).get("cond_dim", 0) > 0
    return {**TEACHER_MAPPING, **(ENCODER_MAPPING if encodes else {})}


def finetune_presets() -> dict[str, Experiment]:
    return {name: exp for name, exp in PRESETS.items() if name.endswith("-finetune")}


def load_teacher(source: str) -> Experiment:
    """The experiment of a run directory or checkpoint file, checked to be a flow-matching model."""
    path = Path(source)
    if path.is_dir() and not is_checkpoint_dir(path):
        from ntm.experiments.runs import load_experiment

        teacher = load_experiment(path / "config.json")
        checkpoint_path(path)  # the run must hold trained weights
    else:
        state = load_checkpoint(checkpoint_path(path), parts=())  # the config (a directory: nothing else is read)
        try:
            teacher = Experiment.model_validate(state["config"])
        except pydantic.ValidationError as e:
            raise UsageError(f"--from {source}: its config does not load: {config_error(e).problems[0][1]}") from None
    predictor, transporter = teacher.model.predictor, teacher.model.transporter
    if not (isinstance(transporter, IdentityConfig) and isinstance(predictor, PosteriorPredictorConfig)
            and predictor.gives_velocity()):
        raise UsageError(
            f"--from {source} is not a flow-matching model (transporter '{TRANSPORTERS.name_of(transporter)}', "
            f"predictor '{PREDICTORS.name_of(predictor)}'); finetuning starts from transporter:identity and "
            "predictor:posterior over a velocity x-hat model (e.g. a run of digits-flow-matching)"
        )
    return teacher


def finetune_base(teacher: Experiment, source: str, preset: Experiment) -> Experiment:
    """``preset`` with the teacher's data, patching, conditioning and velocity network, initialised from it."""
    predictor = preset.model.predictor.replace(xhat=teacher.model.predictor.xhat)
    return preset.replace(
        name=f"{teacher.name}-finetune", data=teacher.data, patch_size=teacher.patch_size,
        conditioner=teacher.conditioner, model=preset.model.replace(predictor=predictor),
        init=InitConfig(path=str(source), mapping=teacher_mapping(teacher)),
    )


__all__ = ["ENCODER_MAPPING", "TEACHER_MAPPING", "finetune_base", "load_teacher",
           "teacher_mapping"]
