"""Run directories as a library: an experiment from its config file, a trained model from a run (or a checkpoint of
it) or from an export file (:mod:`ntm.experiments.exports`), the sampler a command asks for. The commands and the
Python API (:mod:`ntm.experiments.api`) load runs through these functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch

from ntm.autoencoders import AutoencoderError
from ntm.denoisers import DenoiserConfig, LearnedDenoiserConfig
from ntm.denoisers.learned import DenoiserNotTrained
from ntm.experiments.build import build_model, data_for
from ntm.experiments.config import Experiment
from ntm.experiments.core import UsageError
from ntm.experiments.exports import (EXPORT_SUFFIX, EmbeddedDenoiserConfig, ExportSummary, LoadedRun, export_denoiser,
                                     load_export, looks_like_export, read_export, write_export)
from ntm.registry import ConfigError
from ntm.registry.cli import config_error
from ntm.train import distributed as D
from ntm.train.checkpoint import (
    CheckpointError, CheckpointManager, check_config_matches, is_checkpoint_dir, load_sampling_weights,
    read_sampling_state,
)
from ntm.train.config import RESUMABLE_FIELDS


def read_json_file(path: str | Path, what: str) -> Any:
    """The JSON document in ``path``: a one-line :class:`UsageError` naming the file (``what``: "config file") when
    it is not UTF-8 text (a binary file) or not valid JSON."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}): a binary or "
                         "damaged file, not a JSON config") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise UsageError(f"{what} {path} is nested too deeply to be a config") from None


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = read_json_file(path, "config file")
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise UsageError(f"config file {path} holds {kind}, not an experiment config (a JSON object)")
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
    stats = read_json_file(stats_file, "data statistics file") if stats_file.is_file() else {}
    recorded = stats.get("autoencoder") if isinstance(stats, dict) else None
    current = data.spec.encoded_by
    if recorded is not None and current != recorded:
        raise AutoencoderError(f"{run} was trained on latents of autoencoder {recorded}, but its config now gives "
                               f"{current or 'pixels'}: the autoencoder weights changed since; point "
                               "autoencoder.path/weights at the ones the run used")


# -- loading a run ----------------------------------------------------------------
def open_run(run: Path | None, checkpoint: Path | None = None, weights: str = "ema") -> LoadedRun:
    """:func:`load_run` with the step, the weights and the source kept (:class:`LoadedRun`)."""
    if checkpoint is not None and looks_like_export(checkpoint):
        loaded = load_export(checkpoint, weights=weights)
        if run is None:
            return loaded
        # an export of this run: its weights, with the run's data (held-out examples for ntm eval)
        exp = load_experiment(Path(run) / "config.json")
        check_config_matches(loaded.experiment.model_dump(mode="json"), exp.model_dump(mode="json"),
                             ignore=RESUMABLE_FIELDS, path=checkpoint)
        data = data_for(exp)
        check_run_autoencoder(run, data)
        if data.spec.encoded_by != loaded.data.spec.encoded_by:
            raise AutoencoderError(f"export {checkpoint} was made on latents of autoencoder "
                                   f"{loaded.data.spec.encoded_by}, but {run}'s config gives "
                                   f"{data.spec.encoded_by or 'pixels'}")
        return dataclasses.replace(loaded, experiment=exp, data=data, source=Path(run), checkpoint=Path(checkpoint))
    if run is None:
        if checkpoint is not None and Path(checkpoint).exists() and not is_checkpoint_dir(checkpoint):
            read_export(checkpoint)  # the one-line error of what the file is instead (torch file, foreign, corrupt)
        where = f"{checkpoint} is no export; " if checkpoint is not None else ""
        raise UsageError(f"{where}name the run directory (--run RUN) of a checkpoint, or an export file")
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
    used = "ema" if weights == "ema" and "ema" in state else "raw"
    return LoadedRun(exp, data, model.eval(), int(state["step"]), used, Path(run), Path(checkpoint))


def load_run(run: Path | None, checkpoint: Path | None = None, weights: str = "ema"):
    """``(experiment, data, model)`` from a run directory (EMA weights by default), or from an export file.

    ``checkpoint``: a checkpoint file or directory of the run (default: its newest), an ``ntm-export-1`` ``.pt``
    export of it, or an export file (``.safetensors``, :func:`write_export`). An export needs no run directory
    (``run=None``): the experiment, the data statistics and the weights come from the file (``data`` then holds no
    examples: :class:`ExportedData`). Given a run as well, the export must have been written by the run's config.
    """
    return open_run(run, checkpoint, weights).triple()


def run_experiment(run: Path | None, checkpoint: Path | None = None) -> Experiment:
    """The experiment of ``ntm sample/eval [--run RUN] [--checkpoint FILE]``, before any weights are read: the run's
    ``config.json``, or the config inside an export file (its header alone)."""
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if checkpoint is not None and looks_like_export(checkpoint):
        return read_export(checkpoint).experiment
    if run is None:
        raise UsageError("name the run directory (--run RUN) or an export file (--checkpoint FILE.safetensors)")
    return load_experiment(Path(run) / "config.json")


def denoiser_for(exp: Experiment, source: Path, config: DenoiserConfig | None = None) -> DenoiserConfig:
    """``config`` (default: the run's denoiser) as it samples the run directory or export file ``source``.

    A learned denoiser without weights of its own finds the run's distilled one (``<run>/denoiser``), or, for an
    export, the one the file carries (a one-line :class:`DenoiserNotTrained` when it carries none). Nothing but the
    file is consulted for an export, so a ``runs/<name>`` of the same name elsewhere is never picked up.
    """
    config = exp.denoiser if config is None else config
    source = Path(source)
    if not looks_like_export(source):
        return config.for_run(source) if isinstance(config, DenoiserConfig) else config
    if not isinstance(config, LearnedDenoiserConfig) or isinstance(config, EmbeddedDenoiserConfig) or \
            config.weights is not None:
        return config
    embedded = export_denoiser(source)
    if embedded is None:
        raise DenoiserNotTrained(f"export {source} carries no distilled denoiser (its run had none when exported); "
                                 "sample it with the score denoiser or none, or export again after `ntm distill`")
    return embedded


def export_run(run: Path, checkpoint: Path | None = None, weights: str = "ema", out: Path | None = None) -> ExportSummary:
    """``ntm export``: the run's sampling weights (its newest checkpoint by default) as one export file, by default
    ``<run>/export/step_<08d>-<weights>.safetensors``."""
    loaded = open_run(run, checkpoint, weights)
    out = out or Path(run) / "export" / f"step_{loaded.step:08d}-{loaded.weights}{EXPORT_SUFFIX}"
    return write_export(out, loaded)


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
