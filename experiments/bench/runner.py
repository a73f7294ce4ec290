"""``run_suite``: baselines and NTM side by side, same budget and seed, one run.

For each model of a suite (:mod:`ntm.experiments.bench.suites`) the bench trains (or reuses a finished run with the
identical config: :mod:`ntm.experiments.bench.training`), then scores likelihood, sample quality and cost at each
of its evaluation points, and along its curve.

Outputs in ``DIR``: ``results.json`` (a list of rows
``{suite, dataset, model, K, nfe, guidance, denoiser, seed, train_steps, metrics, wall_ms_per_sample}``;
curve rows add ``finetune_steps`` or ``teacher_steps``), ``results.md``, plots of
quality vs NFE and vs wall time and along the curves, one sample figure per row
(:mod:`ntm.experiments.bench.report`), and for 2-D suites ``mixture.json`` plus ``samples_<model>_K<k>.npy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntm.data.base import DataSource
from ntm.denoisers import DENOISERS, LearnedDenoiserConfig, ScoreDenoiserConfig
from ntm.eval.metrics import energy_distance, mmd_rbf, oracle_log_density
from ntm.eval.nll import heldout_nll
from ntm.eval.oracle import oracle_gap
from ntm.eval.timing import measure
from ntm.experiments.bench.report import (latent_table, plot, results_table, shapes_table, write_comparison,
                                          write_prompt_figure)
from ntm.experiments.bench.suites import EvalPoint, Suite, generative_params
from ntm.experiments.bench.training import (distill_or_reuse, matching_wall, record_wall, train_or_reuse,
                                            train_wall, with_autoencoder)
from ntm.experiments.build import (build_denoiser, build_model, conditioner_of, data_for, layout_for, picture,
                                   pixel_images)
from ntm.experiments.config import Experiment
from ntm.samplers import SamplerConfig
from ntm.train.checkpoint import CheckpointManager, load_sampling_weights
from ntm.train.init import initialize_from
from ntm.train.logging import Progress
from ntm.viz import image_grid, save_png


def _sampler_config(exp: Experiment, point: EvalPoint) -> SamplerConfig:
    cfg = (point.sampler if point.sampler is not None else exp.sampler).replace(num_steps=point.steps)
    if "guidance" in type(cfg).model_fields:
        return cfg.replace(guidance=point.guidance)
    if point.guidance:
        raise ValueError(f"{exp.name}: sampler {type(cfg).__name__} has no guidance setting")
    return cfg


def _labels(model, n: int, device: torch.device) -> torch.Tensor | None:
    """Class-balanced labels ``0, 1, ..., C - 1, 0, ...`` for a conditional model; None otherwise."""
    return torch.arange(n, device=device) % model.dims.num_classes if model.dims.num_classes else None


def _sample_fn(exp: Experiment, model, data: DataSource, point: EvalPoint, n: int, device: torch.device, seed: int):
    sampler_cfg = _sampler_config(exp, point)
    sampler_cfg.check_model(exp.model)
    sampler = sampler_cfg.build()
    denoiser = build_denoiser(exp, point.denoiser)
    layout = layout_for(exp, data)
    labels = _labels(model, n, device)

    def run() -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = sampler(model, n, labels, generator=gen, return_trajectory=denoiser.trajectory_request())
        x = denoiser.denoise(model, out, labels)  # decodes only what the denoiser reads
        return layout.from_tokens(x.detach()).float().cpu()

    return run, labels


def psnr_learned_vs_score(exp: Experiment, model, data: DataSource, point: EvalPoint, n: int, device: torch.device,
                          seed: int) -> float:
    """PSNR (dB) of the learned denoiser's output against the score denoiser's, both applied to ONE sampler output
    (the same ``u_0`` and trajectory: the row's samples), in display space; the peak is the range of the
    score-denoised images (as ``ntm distill``'s ``final.json``)."""
    sampler = _sampler_config(exp, point).build()
    labels = _labels(model, n, device)
    out = sampler(model, n, labels, generator=torch.Generator(device=device).manual_seed(seed), return_trajectory=True)
    learned = build_denoiser(exp, point.denoiser).denoise(model, out, labels)
    score = build_denoiser(exp, ScoreDenoiserConfig()).denoise(model, out, labels)
    layout = layout_for(exp, data)
    target, estimate = (data.to_display(layout.from_tokens(x.detach().float().cpu())) for x in (score, learned))
    peak = (target.max() - target.min()).item()
    mse = (estimate - target).square().mean().item()
    return 10 * math.log10(max(peak, 1e-12) ** 2 / max(mse, 1e-30))


@torch.no_grad()
def cycle_psnr(data: DataSource, shown: torch.Tensor) -> float:
    """Mean PSNR (dB) of decoded images ``shown`` (``[0, 1]``) against ``decode(encode(.))`` of themselves, through
    the autoencoder of latent ``data``: how stably the autoencoder's own decoded samples re-encode."""
    x = shown * 2 - 1
    again = data.to_display(data.encode(x))
    mse = (again - shown).square().flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).mean().item()


@dataclasses.dataclass
class _Scoring:
    """What every evaluation of one model shares: the suite, the data, its reference set and feature extractor."""

    suite: Suite
    data: DataSource
    reference: torch.Tensor
    extractor: Any


def _evaluate(sc: _Scoring, exp: Experiment, model, point: EvalPoint, likelihood: bool,
              nll_cache: dict[int, dict[str, float]] | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """One row's ``(fields, samples)``: likelihood (unguided points), sample quality, cost, and the learned
    denoiser's PSNR against score denoising."""
    data, dev = sc.data, next(model.parameters()).device
    layout = layout_for(exp, data)
    sampler_cfg = _sampler_config(exp, point)
    guidance = getattr(sampler_cfg, "guidance", 0.0)
    metrics: dict[str, float] = {}
    if likelihood and not guidance:  # the model's likelihood at K; guided samples do not come from it
        cache = {} if nll_cache is None else nll_cache
        if point.steps not in cache:
            text = getattr(model, "condition_encoder", None) is not None
            conditioner = conditioner_of(exp.conditioner) if text else None
            nll = heldout_nll(model, data, layout, [point.steps], batch_size=exp.eval.batch_size,
                              max_examples=exp.eval.num_examples, seed=exp.eval.seed,
                              conditioner=conditioner)[point.steps]
            found = {"nll_traj_bpd": nll["nll_traj_bpd"], "bound_bpd": nll["bound_bpd"]}
            mixture = getattr(data, "mixture", None)
            if mixture is not None:
                gap = oracle_gap(model, mixture, point.steps, num_examples=8192, seed=exp.eval.seed)
                found.update(oracle_gap_bpd=gap["gap_bpd"], oracle_nll_bpd=gap["oracle_bpd"])
            cache[point.steps] = found
        metrics.update(cache[point.steps])
    n = sc.suite.num_samples
    if sc.suite.text_eval:
        samples, cost = _text_eval(sc, exp, model, point, metrics)
    else:
        run, _ = _sample_fn(exp, model, data, point, n, dev, exp.eval.seed)
        samples = run()  # also the warm-up of the timed call below
        cost = measure(run, repeats=1, warmup=0, device=dev, n=n)
        metrics.update(_quality(sc.suite, data, samples, sc.reference, sc.extractor))
    if data.spec.encoded_by is not None:  # decoded samples re-encode stably?
        metrics["cycle_psnr_db"] = cycle_psnr(data, samples if sc.suite.text_eval else data.to_display(samples))
    denoiser = point.denoiser or exp.denoiser
    if isinstance(denoiser, LearnedDenoiserConfig):
        metrics["psnr_learned_vs_score_db"] = psnr_learned_vs_score(exp, model, data, point, n, dev, exp.eval.seed)
    metrics["peak_mem_mb"] = cost["peak_mem_mb"]
    fields = {
        "suite": sc.suite.name, "dataset": data.__class__.__name__.lower(), "K": point.steps,
        "nfe": point.nfe if point.nfe is not None else layout.num_tokens * exp.model.transporter.num_blocks,
        "guidance": guidance, "denoiser": DENOISERS.name_of(denoiser), "seed": exp.train.seed,
        "train_steps": exp.train.steps, "metrics": metrics, "wall_ms_per_sample": cost["wall_ms_per_sample"],
    }
    return fields, samples


def _text_eval(sc: _Scoring, exp: Experiment, model, point: EvalPoint,
               metrics: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Judge scores (``shapes_<split>_<category>``, ``shapes_<split>_overall``, ``unseen_vs_seen``) and image metrics
    of the seen split into ``metrics``; returns the seen split's samples (display space, ``[0, 1]``) and their
    cost."""
    from ntm.experiments.t2i import shapes_eval

    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result = shapes_eval(exp, model, sc.data, num_samples=sc.suite.num_samples, seed=exp.eval.seed,
                         keep_images=True, sampler=_sampler_config(exp, point), denoiser=point.denoiser)
    for split in ("seen", "unseen"):
        metrics[f"shapes_{split}_overall"] = result[split]["overall"]
        for category, score in result[split]["per_category"].items():
            metrics[f"shapes_{split}_{category}"] = score
    metrics["unseen_vs_seen"] = result["unseen_vs_seen"]
    shown = result["images"]["seen"]
    metrics.update(_quality(sc.suite, sc.data, shown, sc.reference, sc.extractor, shown=True))
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    return shown, {"wall_ms_per_sample": result["wall_ms_per_sample"], "peak_mem_mb": peak}


def _setting(exp: Experiment, point: EvalPoint) -> tuple:
    """What an evaluation of one model depends on: K, the sampler and the denoiser as resolved (not the label)."""
    return point.steps, point.nfe, _sampler_config(exp, point), point.denoiser or exp.denoiser


def _snapshot(exp: Experiment, data: DataSource, step: int, device: torch.device) -> torch.nn.Module:
    """The run's sampling model at ``step``: its kept checkpoint, or at step 0 the initialised model (``exp.init``)."""
    model = build_model(exp, data)
    if step == 0:
        if exp.init is None:
            raise ValueError(f"{exp.name}: a curve point at step 0 needs a model initialised from a run (exp.init)")
        initialize_from(model, exp.init)
    else:
        path = CheckpointManager(Path(exp.resolved_run_dir) / "checkpoints").path_for(step)
        if not path.exists():
            raise FileNotFoundError(f"{exp.name}: no checkpoint at step {step} ({path}); the curve needs "
                                    "train.checkpoint_every and keep_checkpoints to keep it")
        load_sampling_weights(model, path)
    return model.to(device).eval()


def _check_order(suite: Suite) -> None:
    """Every ``init_from`` names an earlier model, whose experiment has an ``init`` to point at it."""
    seen: set[str] = set()
    for bm in suite.models:
        if bm.init_from is not None:
            if bm.init_from not in seen:
                raise ValueError(f"suite {suite.name}: {bm.name} starts from {bm.init_from!r}, which is not an "
                                 "earlier model of the suite")
            if bm.experiment.init is None:
                raise ValueError(f"suite {suite.name}: {bm.name} has init_from but its experiment has no init")
        seen.add(bm.experiment.name)


def run_suite(
    suite: Suite, out: Path, *, device: str = "auto", progress: bool = True,
    data_overrides: dict[str, Any] | None = None, inception_weights: Path | None = None,
) -> list[dict]:
    """Train-or-reuse and evaluate every model of ``suite`` under ``out``, in order; returns the result rows.

    ``data_overrides`` update every model's data config (e.g. shard URLs for the paper suite);
    ``inception_weights`` is the local Inception file for ``image_metrics="inception"``.
    """
    if suite.image_metrics == "inception" and (inception_weights is None or not Path(inception_weights).is_file()):
        raise FileNotFoundError(f"suite {suite.name} needs --inception-weights: a local Inception weights file "
                                f"(got {inception_weights}); nothing is downloaded")
    _check_order(suite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    figures: dict[str, torch.Tensor] = {}
    prompt_samples: dict[str, torch.Tensor] = {}  # row -> (prompts * per_prompt, C, H, W) in [0, 1]
    finals: dict[str, Path] = {}  # experiment name -> its run's final checkpoint
    walls: dict[str, float] = {}  # experiment name (as in the suite) -> its training wall time
    bar = Progress(len(suite.models), desc=f"bench {suite.name}", enabled=progress, print_every=1)
    extractor = None
    for bm in suite.models:
        exp = bm.experiment.replace(run_dir=str(out / "runs" / bm.experiment.name),
                                    data=bm.experiment.data.replace(**(data_overrides or {})),
                                    train=bm.experiment.train.replace(device=device))
        if bm.init_from is not None:
            exp = exp.replace(init=exp.init.replace(path=str(finals[bm.init_from])))
        extra: dict[str, Any] = {}
        if bm.autoencoder is not None:
            exp, extra["autoencoder"] = with_autoencoder(exp, bm.autoencoder, out, device)
        data = data_for(exp)
        if bm.match_wall_of is not None:
            exp, extra["wall_budget_s"] = matching_wall(exp, data, walls[bm.match_wall_of], bm.probe_steps, out)
        started = time.monotonic()
        model = train_or_reuse(exp, data)
        train_seconds = time.monotonic() - started
        finals[exp.name] = CheckpointManager(Path(exp.resolved_run_dir) / "checkpoints").latest_path()
        record_wall(exp, train_seconds)
        walls[bm.experiment.name] = train_wall(exp) or train_seconds
        extra.update({"train_seconds": train_seconds, "train_wall_s": walls[bm.experiment.name],
                      "train_examples_per_s": exp.train.steps * exp.train.batch_size / max(walls[bm.experiment.name], 1e-9),
                      "space": "latent" if data.spec.encoded_by else "pixels",
                      "params": generative_params(exp, data)})
        distilled_steps = None
        if bm.distill_steps is not None:
            network = next((p.denoiser for p in bm.points if isinstance(p.denoiser, LearnedDenoiserConfig)),
                           LearnedDenoiserConfig())
            started = time.monotonic()
            final = distill_or_reuse(exp, bm.distill_steps, network, device) or {}
            extra["distill_seconds"] = time.monotonic() - started
            distilled_steps = final.get("steps", bm.distill_steps)
        dev = next(model.parameters()).device
        if suite.image_metrics == "domain-digits" and extractor is None:
            from ntm.eval.fidelity import domain_extractor_for_digits

            extractor = domain_extractor_for_digits()
        elif suite.image_metrics == "domain-shapes" and extractor is None:
            from ntm.eval.fidelity import domain_extractor_for_shapes

            extractor = domain_extractor_for_shapes((data.spec.image_shape or data.spec.shape)[-1])
        elif suite.image_metrics == "inception":
            extractor = ("inception-v3-compat", {"weights_path": str(inception_weights)})
        if data.spec.kind == "images":  # the training images (one epoch's worth, pixels) as the FID reference
            pixels = pixel_images(data)
            reference = pixels.to_display(next(pixels.train_batches(suite.reference_size, seed=10_000)).x).clamp(0, 1)
        else:
            reference = torch.cat([b.x for b in data.eval_batches(4096)])
        sc = _Scoring(suite, data, reference, extractor)
        nll_cache: dict[int, dict[str, float]] = {}
        done: dict[tuple, tuple[dict[str, Any], torch.Tensor]] = {}  # the final model's evaluations, by setting
        for point in bm.points:
            fields, samples = _evaluate(sc, exp, model, point, bm.likelihood, nll_cache)
            done[_setting(exp, point)] = (fields, samples)
            name = bm.name + (f"-{point.label}" if point.label else "")
            if fields["denoiser"] == "learned":
                fields = {**fields, "distill_steps": distilled_steps}
            rows.append({"model": name, **fields, **extra})
            _keep_samples(out, figures, exp, data, f"{name}_K{point.steps}", samples, suite.text_eval)
            if suite.prompts:
                prompt_samples[f"{name}@{point.steps}"] = _prompt_samples(suite, exp, model, data, point)
        if bm.curve is not None:
            for step in bm.curve.steps(exp.train.steps):
                if step == exp.train.steps and _setting(exp, bm.curve.point) in done:  # the same row, measured above
                    fields, samples = done[_setting(exp, bm.curve.point)]
                    fields = {**fields, "metrics": dict(fields["metrics"])}
                else:
                    snapshot = model if step == exp.train.steps else _snapshot(exp, data, step, dev)
                    fields, samples = _evaluate(sc, exp, snapshot, bm.curve.point, bm.likelihood)
                fields.update(train_steps=step)
                rows.append({"model": bm.curve.name, bm.curve.key: step, **fields, **extra})
                _keep_samples(out, figures, exp, data, f"{bm.curve.name}_K{bm.curve.point.steps}_step{step}", samples,
                              suite.text_eval)
        bar.update(1, model=bm.name)
        if hasattr(data, "mixture") and not (out / "mixture.json").exists():
            _write_mixture(out, data, suite)
    bar.close()
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    brief = latent_table(rows) if any(r.get("space") == "latent" for r in rows) else shapes_table(rows)
    (out / "results.md").write_text((brief + "\n" if suite.text_eval else "") + results_table(rows))
    for key, image in figures.items():
        save_png(image, out / "figures" / f"samples_{key}.png")
    write_comparison(out, suite.comparison)
    if prompt_samples:
        write_prompt_figure(out / "figures" / "prompts.png", suite.prompts, prompt_samples, suite.per_prompt)
    plot(rows, out)
    return rows


def _prompt_samples(suite: Suite, exp: Experiment, model, data: DataSource, point: EvalPoint) -> torch.Tensor:
    """``suite.per_prompt`` samples of every caption of ``suite.prompts`` (display space), the same seed for every row."""
    from ntm.experiments.t2i import sample_captions

    captions = [c for c in suite.prompts for _ in range(suite.per_prompt)]
    images, _ = sample_captions(exp, model, data, captions, seed=exp.eval.seed, sampler=_sampler_config(exp, point),
                                denoiser=point.denoiser)
    return images


def _keep_samples(out: Path, figures: dict[str, torch.Tensor], exp: Experiment, data: DataSource, key: str,
                  samples: torch.Tensor, shown: bool = False) -> None:
    """Keep the row's sample figure (and, for points, the samples); ``shown``: images already in display space."""
    if data.spec.kind == "points":
        np.save(out / f"samples_{key}.npy", samples.numpy())
    if shown:
        upscale = max(1, 64 // samples.shape[-1])
        figures[key] = image_grid(samples[:100], nrow=exp.eval.grid_columns, upscale=upscale)
        return
    figures[key] = picture(exp, data, samples[: 100 if data.spec.kind == "images" else None])


def _quality(suite: Suite, data: DataSource, samples: torch.Tensor, reference: torch.Tensor,
             extractor, shown: bool = False) -> dict[str, float]:
    """Sample-quality metrics of ``samples`` against ``reference`` (``shown``: images already in display space;
    an image ``reference`` is always in display space, pixels even when the model runs on latents)."""
    if data.spec.kind == "points":
        ref = reference[: samples.shape[0]]
        out = {"energy_distance": energy_distance(samples, ref), "mmd": mmd_rbf(samples, ref)}
        mixture = getattr(data, "mixture", None)
        if mixture is not None:
            out["oracle_log_density"] = oracle_log_density(samples, mixture)
        return out
    if extractor is None:  # image_metrics="none"
        return {}
    from ntm.eval.fidelity import fidelity_metrics

    name, kwargs = extractor
    images = (samples if shown else data.to_display(samples)).clamp(0, 1)
    return fidelity_metrics(images, reference, extractor=name, kid_subsets=20, **kwargs)


def _write_mixture(out: Path, data, suite: Suite) -> None:
    schedules = {}
    for bm in suite.models:
        process = bm.experiment.model.process.build()
        for k in bm.experiment.model.process.steps:
            schedules[str(k)] = process.times(k, dtype=torch.float64).tolist()
    (out / "mixture.json").write_text(json.dumps({**data.mixture.to_dict(), "t_schedule": schedules}, indent=2) + "\n")
