"""Text-to-image scoring on the procedural ``shapes`` source: sample a run from held-out captions, judge the images.

``shapes_eval`` draws the run's samples (its sampler and denoiser, unless given) from the captions of the shapes
source's held-out splits — ``seen`` (colour-shape pairs that training captions use) and ``unseen`` (captions naming
a held-out pair: compositional generalisation) — and scores them with the ``shapes-eval`` judge
(:mod:`eval.shapes_judge`): GenEval's six categories and their mean (``overall``), per split.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ntm.eval.shapes_judge import CATEGORIES, score_images, shapes_judge
from ntm.experiments.build import pixel_images, sample
from ntm.experiments.config import Experiment
from ntm.data.base import DataError, DataSource
from ntm.data.shapes import Shapes, held_out_pairs


def shapes_captions(data: DataSource, split: str, n: int) -> list[str]:
    """The first ``n`` captions of a held-out split of the shapes source (the one under latents, if encoded)."""
    data = pixel_images(data)
    if not isinstance(data, Shapes):
        raise DataError(f"shapes-eval needs a run trained on data:shapes, not {type(data).__name__}")
    captions: list[str] = []
    for batch in data.split_batches(split, 256, max_examples=n):
        captions += batch.caption
    return captions


@torch.no_grad()
def sample_captions(exp: Experiment, model: torch.nn.Module, data: DataSource, captions: list[str], *,
                    seed: int = 0, batch_size: int = 250, **sample_kwargs: Any) -> tuple[torch.Tensor, float]:
    """``(images, seconds)``: one sample per caption in display space ``[0, 1]`` and the wall time sampling (and
    decoding, for a model on latents) took.

    Chunk ``i`` (of ``batch_size`` captions) is seeded ``seed + i``; ``sample_kwargs`` go to
    :func:`experiments.build.sample` (``sampler=``, ``denoiser=``, ``denoise=``)."""
    images, seconds = [], 0.0
    for i in range(0, len(captions), batch_size):
        chunk = captions[i : i + batch_size]
        started = time.perf_counter()
        x = sample(exp, model, data, len(chunk), captions=chunk, seed=seed + i, **sample_kwargs)
        images.append(data.to_display(x).clamp(0, 1))  # timed too: decoding latents is part of a sample's cost
        seconds += time.perf_counter() - started
    return torch.cat(images), seconds


@torch.no_grad()
def shapes_eval(exp: Experiment, model: torch.nn.Module, data: DataSource, *, num_samples: int = 500,
                seed: int = 0, batch_size: int = 250, judge=None, keep_images: bool = False,
                **sample_kwargs: Any) -> dict[str, Any]:
    """Per-split (``seen``, ``unseen``) judge scores of ``num_samples`` samples each, plus ``wall_ms_per_sample``.

    ``sample_kwargs`` go to :func:`experiments.build.sample` (``sampler=``, ``denoiser=``, ``denoise=``);
    ``keep_images``: the samples and their captions also come back, under ``images`` and ``captions`` (per split)."""
    judge = judge or shapes_judge((data.spec.image_shape or data.spec.shape)[-1])
    held = held_out_pairs(pixel_images(data).config)
    out: dict[str, Any] = {"num_samples": num_samples, "held_out_pairs": [list(p) for p in held]}
    seconds, count = 0.0, 0
    kept: dict[str, Any] = {"images": {}, "captions": {}}
    for split in ("seen", "unseen"):
        captions = shapes_captions(data, split, num_samples)
        images, took = sample_captions(exp, model, data, captions, seed=seed, batch_size=batch_size, **sample_kwargs)
        seconds, count = seconds + took, count + len(captions)
        scores = score_images(judge, images, captions, held_out=held)
        out[split] = {k: scores[k] for k in ("overall", "per_category", "counts")}
        kept["images"][split], kept["captions"][split] = images, captions
    seen, unseen = out["seen"]["overall"], out["unseen"]["overall"]
    out["unseen_vs_seen"] = unseen / seen if seen else None
    out["wall_ms_per_sample"] = 1000 * seconds / max(count, 1)
    if keep_images:
        out.update(kept)
    return out


def shapes_eval_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per split, one column per category and the overall score."""
    head = "| split | " + " | ".join(CATEGORIES) + " | overall |\n|---|" + "---|" * (len(CATEGORIES) + 1) + "\n"
    rows = []
    for split in ("seen", "unseen"):
        per = result[split]["per_category"]
        cells = [f"{per[c]:.3f}" if c in per else "–" for c in CATEGORIES]
        overall = result[split]["overall"]
        rows.append(f"| {split} | " + " | ".join(cells) + f" | {overall:.3f} |\n" if overall is not None else
                    f"| {split} | " + " | ".join(cells) + " | – |\n")
    return head + "".join(rows)
