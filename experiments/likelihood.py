"""``ntm eval --run RUN --classify`` / ``--ood``: the run's likelihood as a classifier and as an anomaly score.

The scores and the metrics are :mod:`eval.likelihood`; here the run's held-out split is scored and the
out-of-distribution sets are built: uniform noise, the held-out images upside down, inverted, and procedural
shapes scenes rendered grey at the data's size (:func:`eval.likelihood.ood_sets`). A run on latents scores the
encoded images.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ntm.eval.likelihood import (
    auroc, class_log_likelihoods, class_prior, classify, nll_bits, ood_scores, ood_sets,
)
from ntm.experiments.build import layout_for, pixel_images
from ntm.experiments.config import Experiment
from ntm.data.base import DataError, DataSource

SCORES = ("traj", "iw_bound")
"""The per-class log-likelihoods compared: the trajectory log-likelihood (mean over trajectories) and the
importance-weighted x_{t_0} bound."""


def _heldout(data: DataSource, max_examples: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, labels = [], []
    for batch in data.eval_batches(256, max_examples=max_examples):
        xs.append(batch.x)
        if batch.label is not None:
            labels.append(batch.label)
    if not xs:
        raise DataError("the data source has no held-out examples to score")
    return torch.cat(xs), torch.cat(labels) if labels else None


def _chunks(x: torch.Tensor, size: int = 256):
    return (x[i:i + size] for i in range(0, x.shape[0], size))


def classify_run(exp: Experiment, data: DataSource, model: torch.nn.Module, *, num_steps: int,
                 trajectories: int = 4, max_examples: int | None = None) -> dict[str, Any]:
    """Bayes-rule classification of the held-out split with the trajectory likelihood and with the
    importance-weighted bound: accuracy, ECE, log-loss (``{score: metrics}``) and the settings."""
    started = time.monotonic()
    x, labels = _heldout(data, max_examples)
    if labels is None:
        raise DataError("--classify needs held-out labels")
    loglik = class_log_likelihoods(model, _chunks(x), layout_for(exp, data), num_steps, trajectories=trajectories,
                                   seed=exp.eval.seed)
    prior = class_prior(data, model.dims.num_classes)
    out: dict[str, Any] = {score: classify(loglik[score][:, :-1], labels, prior) for score in SCORES}
    out.update(K=num_steps, trajectories=trajectories, seconds=time.monotonic() - started)
    return out


def ood_run(exp: Experiment, data: DataSource, model: torch.nn.Module, *, num_steps: int, trajectories: int = 4,
            max_examples: int | None = 500) -> dict[str, Any]:
    """AUROC of each score (``nll``, ``typicality``; ``likelihood-ratio`` and ``class-marginal`` when the model has
    classes) for the
    held-out split against each out-of-distribution set, with the mean NLL (bits/dim) of every set."""
    started = time.monotonic()
    if data.spec.kind != "images":
        raise DataError("--ood scores images; this run's data are points")
    pixels = pixel_images(data)
    images, _ = _heldout(pixels, max_examples)
    pixel_max = pixels.stats().get("pixel_max")  # the data's grey levels, for noise and shapes on the same grid
    levels = None if pixel_max is None else int(pixel_max) + 1
    sets = {"heldout": images, **ood_sets(images, seed=exp.eval.seed, levels=levels)}
    encode = getattr(data, "encode", None)  # a run on latents scores the encoded images
    layout = layout_for(exp, data)
    dims = layout.dim * num_steps
    with_classes = model.dims.num_classes > 0
    prior = class_prior(data, model.dims.num_classes) if with_classes else None
    train_x = next(pixels.train_batches(min(len(images), 512), seed=10_000)).x
    train = class_log_likelihoods(model, _chunks(encode(train_x) if encode else train_x), layout, num_steps,
                                  trajectories=trajectories, seed=exp.eval.seed + 1, with_classes=False)["traj"]
    train_nll = nll_bits(train, dims).mean().item()
    scores: dict[str, dict[str, torch.Tensor]] = {}
    nll_means: dict[str, float] = {}
    for name, x in sets.items():
        loglik = class_log_likelihoods(model, _chunks(encode(x) if encode else x), layout, num_steps,
                                       trajectories=trajectories, seed=exp.eval.seed, with_classes=with_classes)
        scores[name] = ood_scores(loglik["traj"], dims, train_nll, log_prior=prior)
        nll_means[name] = scores[name]["nll"].mean().item()
    auc = {name: {score: auroc(scores["heldout"][score], values) for score, values in scores[name].items()}
           for name in sets if name != "heldout"}
    return {"auroc": auc, "nll_bpd": nll_means, "train_nll_bpd": train_nll, "K": num_steps,
            "trajectories": trajectories, "examples": int(images.shape[0]), "seconds": time.monotonic() - started}


def classify_table(result: dict[str, Any]) -> str:
    lines = ["| score | accuracy | ECE | log-loss |", "|---|---|---|---|"]
    for score in SCORES:
        m = result[score]
        lines.append(f"| {score} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['log_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def ood_table(result: dict[str, Any]) -> str:
    names = list(result["auroc"])
    scores = list(next(iter(result["auroc"].values())))
    lines = ["| score | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for score in scores:
        lines.append(f"| {score} | " + " | ".join(f"{result['auroc'][n][score]:.4f}" for n in names) + " |")
    lines.append("| mean NLL (bits/dim) | " + " | ".join(f"{result['nll_bpd'][n]:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["classify_run", "classify_table", "ood_run", "ood_table"]
