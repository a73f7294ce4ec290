"""Tiny trained runs for the Python API tests (session-scoped: trained once, a few seconds each on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntm.experiments.build import data_for, train_job
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.train.loop import train


def tiny(preset: str, run_dir: Path, **updates) -> Experiment:
    """``preset`` with minimal networks, 2 training steps and no previews, writing to ``run_dir``."""
    exp = PRESETS[preset]
    model = exp.model
    transporter = model.transporter
    if "width" in type(transporter).model_fields:
        transporter = transporter.replace(width=16, num_heads=2, num_blocks=2, layers_per_block=1)
    predictor = model.predictor.replace(width=32, depth=1)
    fields = {
        "run_dir": str(run_dir), "model": model.replace(transporter=transporter, predictor=predictor),
        "train": exp.train.replace(steps=2, warmup_steps=0, sample_every=0, log_every=1, device="cpu"),
        "eval": exp.eval.replace(num_examples=64),
    }
    if exp.data.build().spec.kind == "images" and exp.autoencoder.is_identity:
        fields["patch_size"] = 4  # 8x8 digits: 4 tokens of 16 values (fast sequential inverses)
    return exp.replace(**{**fields, **updates})


def train_tiny(exp: Experiment) -> Path:
    """Train ``exp`` (config.json, data_stats.json and a checkpoint in its run directory); returns the directory."""
    result = train(train_job(exp, data_for(exp)))
    result.close()
    return Path(exp.resolved_run_dir)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A class-conditional image run: digits-ntm (8x8 digits, 10 classes, score denoiser, guidance 1.5)."""
    return train_tiny(tiny("digits-ntm", tmp_path_factory.mktemp("api") / "digits"))


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """An unconditional run on 2-D points: toy-ntm."""
    return train_tiny(tiny("toy-ntm", tmp_path_factory.mktemp("api") / "toy"))
