"""Run directories as a library: an experiment from its config file, a trained model from a run (or a checkpoint
of it), the sampler a command asks for. The commands and the Python API load runs through these functions."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch

from ntm.autoencoders import AutoencoderError
from ntm.experiments.build import build_model, data_for
from ntm.experiments.config import Experiment
from ntm.experiments.core import UsageError
from ntm.registry import ConfigError
from ntm.registry.cli import config_error
from ntm.train import distributed as D
from ntm.train.checkpoint import (
    CheckpointError, CheckpointManager, check_config_matches, load_sampling_weights, read_sampling_state,
)
from ntm.train.config import RESUMABLE_FIELDS


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"config file {path} is not valid JSON: {e}") from None
    try:
        return Experiment.model_validate(data)
    except pydantic.ValidationError as e:
        raise config_error(e) from None


def nll_space(data) -> dict[str, Any]:
    """What the reported likelihoods are per: ``{"nll_space": "pixels" | "latent", "nll_dims": D}``."""
    dims = int(np.prod(data.spec.shape))
    return {"nll_space": "latent" if data.spec.encoded_by else "pixels", "nll_dims": dims}


def check_run_autoencoder(run: Path, data) -> None:
    """A run on latents records its autoencoder's fingerprint (data_stats.json); refuse another one."""
    stats_file = Path(run) / "data_stats.json"
    recorded = json.loads(stats_file.read_text()).get("autoencoder") if stats_file.is_file() else None
    current = data.spec.encoded_by
    if recorded is not None and current != recorded:
        raise AutoencoderError(f"{run} was trained on latents of autoencoder {recorded}, but its config now gives "
                               f"{current or 'pixels'}: the autoencoder weights changed since; point "
                               "autoencoder.path/weights at the ones the run used")


# -- loading a run ----------------------------------------------------------------
def load_run(run: Path, checkpoint: Path | None = None, weights: str = "ema"):
    """``(experiment, data, model)`` from a run directory (EMA weights by default)."""
    exp = load_experiment(Path(run) / "config.json")
    data = data_for(exp)
    check_run_autoencoder(run, data)
    if checkpoint is None:
        checkpoint = CheckpointManager(Path(run) / "checkpoints").latest_path()
        if checkpoint is None:
            raise CheckpointError(f"no checkpoint in {Path(run) / 'checkpoints'}")
    state = read_sampling_state(checkpoint, weights, required=("step", "config"))
    saved = state["config"]
    with contextlib.suppress(pydantic.ValidationError):  # a config in an older layout, read as today's
        saved = Experiment.model_validate(saved).model_dump(mode="json")
    check_config_matches(saved, exp.model_dump(mode="json"), ignore=RESUMABLE_FIELDS, path=checkpoint)
    model = build_model(exp, data)
    load_sampling_weights(model, state, weights=weights, path=checkpoint)
    return exp, data, model.eval()


def shard_under_torchrun(exp: Experiment, model: torch.nn.Module) -> tuple[D.DistContext, torch.nn.Module]:
    """Launched by torchrun (``WORLD_SIZE > 1``): the process group (``exp.train.device``) and ``model`` sharded over
    it (FSDP2 on a flat mesh, frozen, each unit resharded after use), for sharded sampling and scoring. One
    process: a context without a group and ``model`` as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return D.DistContext(), model
    ctx = D.init(exp.train.device)
    model = D.wrap(model.requires_grad_(False), ctx, "fsdp", reshard_after_forward=True)
    return ctx, D.enable_sharded_calls(model).eval()


def sampler_for(exp: Experiment, **settings: Any):
    """The run's sampler config with ``settings`` (None: keep) applied, validated; errors name ``sampler.<field>``."""
    updates = {k: v for k, v in settings.items() if v is not None}
    try:
        sampler = exp.sampler.replace(**updates)
        exp.replace(sampler=sampler)  # the run's own checks of a sampler against its model (e.g. guidance)
        return sampler
    except pydantic.ValidationError as e:
        problems = [(f"sampler.{p}" if p else "sampler", m) for p, m in config_error(e).problems]
        raise ConfigError(problems) from None
