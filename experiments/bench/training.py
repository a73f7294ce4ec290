"""The training side of a bench run: each model trained, or its finished run of the identical config reused; the
autoencoder a latent model needs; a training budget matched to another model's wall time; the learned denoiser
distilled in-process."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntm.data.base import DataSource
from ntm.denoisers import LearnedDenoiserConfig
from ntm.denoisers.learned import DENOISER_DIR
from ntm.experiments.build import build_model, train_job, upgrade_saved_config
from ntm.experiments.config import Experiment
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, load_sampling_weights, read_sampling_state
from ntm.train.loop import train


def train_or_reuse(exp: Experiment, data: DataSource) -> torch.nn.Module:
    """The EMA model of a finished run with this exact config, training (or resuming) it if needed."""
    run_dir = Path(exp.resolved_run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    latest = manager.latest_path()
    if latest is not None:
        state = read_sampling_state(latest)
        if upgrade_saved_config(state["config"]) == exp.model_dump(mode="json") and state["step"] >= exp.train.steps:
            return load_sampling_weights(build_model(exp, data), state, path=latest).eval()
    result = train(train_job(exp, data, resume=latest is not None))
    return result.ema_model


def with_autoencoder(exp: Experiment, ae: Any, out: Path, device: str) -> tuple[Experiment, dict[str, Any]]:
    """``exp`` on the autoencoder of run ``ae`` (trained under ``out/runs`` unless a finished run of the same config
    is there) and that autoencoder's figures (reconstruction and cycle PSNR, KL, training time)."""
    from ntm.experiments.autoencoder import train_autoencoder
    from ntm.autoencoders import FILE_NAME, PretrainedAutoencoderConfig

    ae = ae.replace(run_dir=str(out / "runs" / ae.name), train=ae.train.replace(device=device))
    run_dir = Path(ae.resolved_run_dir)
    saved = run_dir / "config.json"
    final_file = run_dir / "final.json"
    reuse = ((run_dir / FILE_NAME).is_file() and final_file.is_file() and saved.is_file()
             and json.loads(saved.read_text()) == ae.model_dump(mode="json"))
    if not reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
        train_autoencoder(ae, quiet=True)
    final = json.loads(final_file.read_text())
    keep = ("psnr", "cycle_psnr", "kl_per_latent_dim", "compression", "latent_shape", "wall_seconds", "fingerprint")
    return exp.replace(autoencoder=PretrainedAutoencoderConfig(path=str(run_dir))), {k: final.get(k) for k in keep}


TRAIN_RECORD = "bench_train.json"
"""A bench run's own record of its training wall time (``{"steps", "wall_s"}``), so a reused run keeps it."""


def train_wall(exp: Experiment) -> float | None:
    """The training wall time :data:`TRAIN_RECORD` holds for ``exp``'s run at its ``train.steps`` (None: none)."""
    record = Path(exp.resolved_run_dir) / TRAIN_RECORD
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("steps") == exp.train.steps:
            return float(saved["wall_s"])
    return None


def record_wall(exp: Experiment, seconds: float) -> None:
    """Write ``seconds`` as the training wall time of ``exp``'s run, unless one is recorded for its budget (a reused
    run keeps the time it trained in)."""
    if train_wall(exp) is None:
        record = Path(exp.resolved_run_dir) / TRAIN_RECORD
        record.write_text(json.dumps({"steps": exp.train.steps, "wall_s": seconds}) + "\n")


def matching_wall(exp: Experiment, data: DataSource, wall: float, probe_steps: int,
                  out: Path) -> tuple[Experiment, float]:
    """``exp`` with ``train.steps`` set so that it trains for about ``wall`` seconds: the steps per second of a
    probe run of ``probe_steps`` steps (after 5 warm-up steps) times ``wall``. The decision is kept in the run
    directory (``wall_match.json``) so a rerun of the bench reuses the trained run."""
    run_dir = Path(out / "runs" / exp.name)
    decision = run_dir / "wall_match.json"
    if decision.is_file():
        saved = json.loads(decision.read_text())
        if saved.get("wall_s") == wall and saved.get("config") == exp.model_dump(mode="json"):
            steps = int(saved["steps"])
            return _with_steps(exp, steps), wall
    probe_dir = out / "runs" / f"{exp.name}-probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    probe = exp.replace(run_dir=str(probe_dir), train=exp.train.replace(
        steps=5 + probe_steps, log_every=1, sample_every=0, checkpoint_every=5 + probe_steps, warmup_steps=0))
    train(train_job(probe, data))
    rates = [json.loads(line)["examples_per_s"] for line in (probe_dir / "metrics.jsonl").read_text().splitlines()]
    rate = float(np.median(rates[5:] or rates)) / exp.train.batch_size  # steps per second, warm-up skipped
    shutil.rmtree(probe_dir, ignore_errors=True)
    steps = max(1, int(wall * rate))
    run_dir.mkdir(parents=True, exist_ok=True)
    decision.write_text(json.dumps({"wall_s": wall, "steps_per_s": rate, "steps": steps,
                                    "config": exp.model_dump(mode="json")}) + "\n")
    return _with_steps(exp, steps), wall


def _with_steps(exp: Experiment, steps: int) -> Experiment:
    return exp.replace(train=exp.train.replace(steps=steps, checkpoint_every=steps,
                                               warmup_steps=min(exp.train.warmup_steps, steps // 5)))


def distill_or_reuse(exp: Experiment, steps: int, network: LearnedDenoiserConfig,
                     device: str = "auto") -> dict[str, Any] | None:
    """The run's learned denoiser, distilled in-process (``ntm distill``) for ``steps`` into ``<run>/denoiser/``.

    A distillation there from the run's newest checkpoint with the same network is reused when it has ``steps``
    (its ``final.json`` is returned) and resumed when shorter; any other (a stale one: the run trained on since,
    another network) is removed and distilled again. Returns what ``final.json`` holds.
    """
    from ntm.experiments.distill import DistillArgs, distill

    run = Path(exp.resolved_run_dir)
    teacher = CheckpointManager(run / "checkpoints").latest_path()
    out = run / DENOISER_DIR
    latest = CheckpointManager(out / "checkpoints").latest_path()
    args = DistillArgs(run=run, steps=steps, width=network.width, depth=network.depth, num_heads=network.num_heads,
                       device=device, num_eval=min(512, exp.eval.num_examples or 512))
    if latest is not None:
        state = load_checkpoint(latest, parts=())  # its config (a directory: nothing else is read)
        saved = state.get("config") or {}
        same = (teacher is not None and saved.get("teacher") == teacher.name
                and {k: v for k, v in (saved.get("network") or {}).items() if k != "weights"} == network.architecture())
        if same and state["step"] >= steps and (out / "final.json").is_file():
            return json.loads((out / "final.json").read_text())
        if same:
            return distill(dataclasses.replace(args, resume=True))
        print(f"bench: {out} was distilled from another checkpoint or network; distilling again", flush=True)
        shutil.rmtree(out)
    return distill(args)
