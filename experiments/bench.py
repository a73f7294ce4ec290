"""``ntm bench SUITE --out DIR``: baselines and NTM side by side, same budget and seed, one run.

A suite is a list of :class:`BenchModel` s (an experiment each, all built from
the same preset with the same training budget and seed) and, per model, the
evaluation points (a sampler setting: K for NTM-style models, ODE steps for
flow matching; optionally a guidance weight and a denoiser). For each model the
bench trains (or reuses a finished run with the identical config), then scores
likelihood, sample quality and cost.

A model may start from an earlier model's weights (``init_from``: the
finetuned NTMs start from the suite's flow-matching model, the teacher), have
its learned one-pass denoiser distilled in-process (``distill_steps``), and be
evaluated along its training (``curve``: kept intermediate checkpoints, step 0
being the initialised model).

Outputs in ``DIR``: ``results.json`` (a list of rows
``{suite, dataset, model, K, nfe, guidance, denoiser, seed, train_steps, metrics, wall_ms_per_sample}``;
curve rows add ``finetune_steps`` or ``teacher_steps``), ``results.md``, plots of
quality vs NFE and vs wall time and along the curves, one sample figure per row,
and for 2-D suites ``mixture.json`` plus ``samples_<model>_K<k>.npy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ntm.eval.metrics import energy_distance, mmd_rbf, oracle_log_density
from ntm.eval.nll import heldout_nll
from ntm.eval.oracle import oracle_gap
from ntm.eval.timing import measure
from ntm.experiments.build import (build_denoiser, build_model, conditioner_of, data_for, layout_for, picture,
                               pixel_images, train_job, upgrade_saved_config)
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.data.base import DataSource
from ntm.denoisers import DENOISERS, DenoiserConfig, LearnedDenoiserConfig, NoDenoiserConfig, ScoreDenoiserConfig
from ntm.denoisers.learned import DENOISER_DIR
from ntm.losses import FlowMatchingConfig
from ntm.predictors import GaussianHeadConfig, PosteriorPredictorConfig, PredictorConfig, VelocityTransformerConfig
from ntm.samplers import AncestralConfig, EulerConfig, HeunConfig, ODEConfig, SamplerConfig
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, load_sampling_weights, read_sampling_state
from ntm.train.init import initialize_from
from ntm.train.logging import Progress
from ntm.train.loop import train
from ntm.transporters import IdentityConfig, TransporterConfig
from ntm.viz import image_grid, load_png, save_png, titled_row
from ntm.registry import ComponentConfig


@dataclasses.dataclass(frozen=True)
class EvalPoint:
    steps: int
    """Passed to the sampler as ``num_steps`` (K, or ODE integration steps)."""
    nfe: int | None
    """Sequential network evaluations per sample, as conventionally counted for this model family
    (None: the transporter's sequential AR steps, tokens x blocks, as for a single AR flow)."""
    sampler: SamplerConfig | None = None
    """Sampler override (e.g. ``HeunConfig(num_steps=4)``); None: the experiment's sampler."""
    label: str = ""
    """Suffix for the row's model name (e.g. ``heun``, ``w1.5``, ``learned-w1.5``)."""
    guidance: float = 0.0
    """Classifier-free guidance weight the sampler runs with; set on every point (the digits presets' own
    sampler configs guide by default), so rows without a ``w<weight>`` label are unguided."""
    denoiser: DenoiserConfig | None = None
    """Denoiser override (``LearnedDenoiserConfig(...)``: the run's distilled one, needs the model's
    ``distill_steps``; ``NoDenoiserConfig()``: none); None: the experiment's denoiser."""


@dataclasses.dataclass(frozen=True)
class Curve:
    """A model evaluated along its training: one row per kept checkpoint."""

    name: str
    """The rows' model name (e.g. ``finetuned-curve``)."""
    key: str
    """The row field holding the checkpoint's step count (e.g. ``finetune_steps``); ``train_steps`` holds it too."""
    fractions: tuple[float, ...]
    """Fractions of the model's ``train.steps``; 0 is the initialised model (``exp.init``) before any step."""
    point: EvalPoint
    """The evaluation point of every row."""

    def steps(self, total: int) -> tuple[int, ...]:
        """The checkpoint steps: each fraction of ``total`` rounded (at least 1 unless 0), without repeats."""
        return _curve_steps(total, self.fractions)


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str
    experiment: Experiment
    points: tuple[EvalPoint, ...]
    likelihood: bool = True
    """Score held-out trajectory NLL at each K (models with an NTM likelihood; unguided points only)."""
    init_from: str | None = None
    """The experiment name of an earlier model of the suite whose trained weights initialise this one:
    ``experiment.init.path`` is set to that run's final checkpoint before training (finetuning)."""
    distill_steps: int | None = None
    """Distill the run's learned denoiser (in-process ``ntm distill``) for this many steps into
    ``<run>/denoiser/`` before evaluating (the architecture: the first learned-denoiser point's config)."""
    curve: Curve | None = None
    """Rows along training, from checkpoints the experiment keeps (see :func:`_keeping`)."""
    autoencoder: Any = None
    """An :class:`~experiments.autoencoder.AutoencoderExperiment` trained (or reused when its ``autoencoder.pt``
    came from the same config) under ``DIR/runs`` before this model, whose ``autoencoder:pretrained`` is pointed
    at it; its training time is reported apart (an autoencoder is trained once and serves many models)."""
    match_wall_of: str | None = None
    """The name of an earlier model of the suite: train this one for that model's training wall time (its
    ``train.steps`` set from a short probe of this one's speed), so the two compare at the same wall budget."""
    probe_steps: int = 20
    """Steps of the speed probe of ``match_wall_of`` (after 5 warm-up steps)."""


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[BenchModel, ...]
    num_samples: int
    """Samples drawn per evaluation point."""
    image_metrics: Literal["none", "domain-digits", "domain-shapes", "inception"] = "none"
    """FID/KID/precision/recall features: a domain classifier trained on digits or on shapes, or Inception (local
    weights);
    "none" on images: no sample-quality metrics (smoke tests)."""
    reference_size: int = 1500
    """Reference images for image metrics (drawn from the training split)."""
    comparison: tuple[tuple[str, str], ...] = ()
    """``(figure key, title)`` panels of ``figures/compare.png``, side by side (keys: ``<row model>_K<steps>``);
    written when every panel's samples exist."""
    text_eval: bool = False
    """Caption-conditioned models on ``data:shapes``: every row is sampled from the held-out captions and scored
    by the shapes-eval judge (:func:`experiments.t2i.shapes_eval`: seen and unseen splits, ``num_samples`` each);
    image metrics compare the seen split's samples with the reference."""
    prompts: tuple[str, ...] = ()
    """Captions of ``figures/prompts.png``: one row per caption, every row's samples from the same seed, one
    column block per evaluated row of the suite (text suites)."""
    per_prompt: int = 2
    """Samples per caption and row in ``figures/prompts.png``."""


# -- suites ---------------------------------------------------------------------
_TINY = {"depth": 1, "width": 16, "num_heads": 2, "layers_per_block": 1}
"""The fields a ``tiny`` suite shrinks, wherever a network config has them."""


def _shrink(cfg: ComponentConfig) -> ComponentConfig:
    """``cfg`` with every field of :data:`_TINY` it has set to the minimum, and its ``xhat`` model shrunk too."""
    fields = type(cfg).model_fields
    updates: dict[str, Any] = {key: value for key, value in _TINY.items() if key in fields}
    if "xhat" in fields:
        updates["xhat"] = _shrink(cfg.xhat)
    return cfg.replace(**updates) if updates else cfg


def _variant(base: Experiment, name: str, *, steps: tuple[int, ...], train_steps: int, seed: int, tiny: bool,
             transporter: TransporterConfig | None = None, predictor: PredictorConfig | None = None,
             **updates: Any) -> Experiment:
    """``base`` trained for ``steps`` on the suite's budget and seed, with the model's ``transporter`` and
    ``predictor`` replaced where given and the experiment's other slots by ``updates``."""
    net = base.model.replace(process=base.model.process.replace(steps=steps),
                             transporter=base.model.transporter if transporter is None else transporter,
                             predictor=base.model.predictor if predictor is None else predictor)
    train = base.train.replace(steps=train_steps, seed=seed, sample_every=0, checkpoint_every=train_steps,
                               warmup_steps=min(base.train.warmup_steps, train_steps // 5))
    evaluation = base.eval
    if tiny:
        net = net.replace(predictor=_shrink(net.predictor), transporter=_shrink(net.transporter))
        evaluation = evaluation.replace(num_examples=64)
        updates.setdefault("conditioner", _shrink(base.conditioner))  # a text encoder: shrunk; labels: unchanged
    return base.replace(name=name, model=net, train=train, eval=evaluation, **updates)


def _curve_steps(total: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(sorted({0 if f == 0 else min(total, max(1, round(f * total))) for f in fractions}))


def _keeping(exp: Experiment, fractions: tuple[float, ...]) -> Experiment:
    """``exp`` saving and keeping a checkpoint at each positive step of the curve ``fractions`` (and its last)."""
    total = exp.train.steps
    every = math.gcd(total, *(s for s in _curve_steps(total, fractions) if s > 0))
    return exp.replace(train=exp.train.replace(checkpoint_every=every, keep_checkpoints=total // every))


def _ode_point(sampler: ODEConfig, label: str) -> EvalPoint:
    """An evaluation point of an ODE sampler: ``sampler.num_steps`` steps, NFE counted by the sampler class."""
    return EvalPoint(sampler.num_steps, sampler.build().nfe(sampler.num_steps), sampler, label)


def _with_guidance(point: EvalPoint, guidance: tuple[float, ...]) -> tuple[EvalPoint, ...]:
    """``point`` unguided and at each weight of ``guidance`` (label suffix ``w<weight>``)."""
    guided = [dataclasses.replace(point, guidance=w, label="-".join(filter(None, (point.label, f"w{w:g}"))))
              for w in guidance]
    return (point, *guided)


CURVE_FRACTIONS = (0.0, 0.25, 0.5, 1.0)
"""Where the finetune curve is evaluated, as fractions of the finetune budget (0: the initialised model)."""
TEACHER_CURVE_FRACTIONS = (0.25, 0.5, 1.0)
"""Where the teacher-convergence curve (flow matching, Euler at the most steps) is evaluated."""


def _family(base: Experiment, prefix: str, train_steps: int, seed: int, tiny: bool, ar_blocks: int,
            ks: tuple[int, ...], multi_ks: tuple[int, ...], ode_steps: tuple[int, ...], heun_steps: tuple[int, ...],
            gaussian_ks: tuple[int, ...], teacher_steps: int | None = None,
            teacher_curve: tuple[float, ...] = ()) -> tuple[BenchModel, ...]:
    """The models of one suite, from one preset: NTM per K, Gaussian baselines, flow matching, AR flow, multi-K.

    Flow matching trains for ``teacher_steps`` (default ``train_steps``): it is also the finetuning teacher; with
    ``teacher_curve`` it keeps checkpoints and gets ``flow-matching-curve`` rows (Euler at the most ODE steps).
    """
    v = lambda name, steps, **u: _variant(base, f"{prefix}-{name}", steps=steps, train_steps=train_steps,  # noqa: E731
                                          seed=seed, tiny=tiny, **u)
    predictor = base.model.predictor
    models = [BenchModel("ntm", v(f"ntm-K{k}", (k,)), (EvalPoint(k, k),)) for k in ks]
    models.append(BenchModel("ntm-multi-k", v("ntm-multi-k", multi_ks), tuple(EvalPoint(k, k) for k in multi_ks)))
    for k in gaussian_ks:
        models.append(BenchModel("gaussian", v(f"gaussian-K{k}", (k,), transporter=IdentityConfig()), (EvalPoint(k, k),)))
        sigma = v(f"gaussian-posterior-sigma-K{k}", (k,), transporter=IdentityConfig(),
                  predictor=predictor.replace(head=GaussianHeadConfig(sigma="posterior")))
        models.append(BenchModel("gaussian-posterior-sigma", sigma, (EvalPoint(k, k),)))
    # flow matching: a velocity network of the predictor's size on x directly, sampled by an ODE solver
    velocity = PosteriorPredictorConfig(learned_scale=False, xhat=VelocityTransformerConfig(
        depth=predictor.depth, width=predictor.width, num_heads=predictor.num_heads, mlp_ratio=predictor.mlp_ratio))
    fm = _variant(base, f"{prefix}-flow-matching", steps=(max(ks),), train_steps=teacher_steps or train_steps,
                  seed=seed, tiny=tiny, transporter=IdentityConfig(), predictor=velocity, loss=FlowMatchingConfig(),
                  sampler=EulerConfig(num_steps=max(ode_steps)), denoiser=NoDenoiserConfig())
    curve = None
    if teacher_curve:
        fm = _keeping(fm, teacher_curve)
        curve = Curve("flow-matching-curve", "teacher_steps", teacher_curve,
                      _ode_point(EulerConfig(num_steps=max(ode_steps)), ""))
    points = [_ode_point(EulerConfig(num_steps=n), "euler") for n in ode_steps]
    points += [_ode_point(HeunConfig(num_steps=n), "heun") for n in heun_steps]
    models.append(BenchModel("flow-matching", fm, tuple(points), likelihood=False, curve=curve))
    # K = 1 with a deeper transporter: one AR flow on x_{t_0}; NFE counts its sequential AR steps
    ar = v("ar-flow", (1,), transporter=base.model.transporter.replace(num_blocks=ar_blocks),
           predictor=predictor.replace(depth=1), denoiser=ScoreDenoiserConfig())
    models.append(BenchModel("ar-flow", ar, (EvalPoint(1, None),)))
    return tuple(models)


def _finetune_family(family: tuple[BenchModel, ...], prefix: str, preset: Experiment, *, finetune_steps: int,
                     seed: int, tiny: bool, posterior_ks: tuple[int, ...], finetune_k: int,
                     multi_ks: tuple[int, ...], guidance: tuple[float, ...],
                     distill_steps: int | None) -> tuple[BenchModel, ...]:
    """``family`` plus the teacher's posterior sampler and NTMs finetuned from it (``ntm finetune``).

    - ``teacher-posterior``: the flow-matching model sampled as a Gaussian-posterior NTM (ancestral sampler, no
      transporter, no denoiser) at each K of ``posterior_ks``, with its trajectory NLL;
    - ``finetuned``: ``finetune_base(teacher, its run, preset)`` at K = ``finetune_k`` for ``finetune_steps``, with the
      preset's denoiser (and, with ``distill_steps``, the distilled learned denoiser: ``finetuned-learned``), plus
      ``finetuned-curve`` rows at :data:`CURVE_FRACTIONS` of the budget (undenoised, as the teacher posterior);
    - ``finetuned-multi-k``: one finetuned model for every K of ``multi_ks``;
    - with ``distill_steps``: the from-scratch NTM at ``finetune_k`` with its own distilled denoiser (``ntm-learned``).

    Every new NTM-style point is also evaluated at each weight of ``guidance`` (``-w<weight>`` rows).
    """
    from ntm.experiments.finetune import finetune_base

    models = list(family)
    fm = next(m for m in models if m.name == "flow-matching")
    teacher = fm.experiment
    learned = None
    if distill_steps is not None:
        learned = LearnedDenoiserConfig(**({k: _TINY[k] for k in ("width", "depth", "num_heads")} if tiny else {}))
    # the from-scratch NTM at K = finetune_k: guided, and with its own distilled denoiser
    i, ntm = next((i, m) for i, m in enumerate(models)
                  if m.name == "ntm" and m.experiment.model.process.steps == (finetune_k,))
    points = _with_guidance(ntm.points[0], guidance)
    if learned is not None:
        points += _with_guidance(EvalPoint(finetune_k, finetune_k, label="learned", denoiser=learned), guidance)
    models[i] = dataclasses.replace(ntm, points=points, distill_steps=distill_steps)
    posterior = tuple(p for k in posterior_ks for p in _with_guidance(EvalPoint(k, k, AncestralConfig(num_steps=k)),
                                                                      guidance))
    models.append(BenchModel("teacher-posterior", teacher, posterior))
    # the teacher's final checkpoint replaces this source path in run_suite, once the teacher is trained
    base = finetune_base(teacher, teacher.resolved_run_dir, preset)

    def ft(name: str, steps: tuple[int, ...]) -> Experiment:
        return _variant(base, f"{prefix}-{name}", steps=steps, train_steps=finetune_steps, seed=seed, tiny=tiny)

    points = _with_guidance(EvalPoint(finetune_k, finetune_k), guidance)
    if learned is not None:
        points += _with_guidance(EvalPoint(finetune_k, finetune_k, label="learned", denoiser=learned), guidance)
    curve = Curve("finetuned-curve", "finetune_steps", CURVE_FRACTIONS,
                  EvalPoint(finetune_k, finetune_k, denoiser=NoDenoiserConfig()))
    models.append(BenchModel("finetuned", _keeping(ft(f"finetuned-K{finetune_k}", (finetune_k,)), CURVE_FRACTIONS),
                             points, init_from=teacher.name, distill_steps=distill_steps, curve=curve))
    multi = tuple(p for k in multi_ks for p in _with_guidance(EvalPoint(k, k), guidance))
    models.append(BenchModel("finetuned-multi-k", ft("finetuned-multi-k", multi_ks), multi, init_from=teacher.name))
    return tuple(models)


def toy_suite(train_steps: int = 400, seed: int = 0, tiny: bool = False, num_samples: int = 4000,
              finetune_steps: int | None = None, distill_steps: int | None = None,
              teacher_steps: int | None = None) -> Suite:
    """The 2-D mixture. ``finetune_steps`` default ``train_steps // 2``, ``teacher_steps`` default ``train_steps``;
    ``distill_steps`` is not used (toy models have no denoiser; no learned-denoiser rows)."""
    base = PRESETS["toy-ntm"]
    teacher_steps = teacher_steps or train_steps
    family = _family(base, "toy", train_steps, seed, tiny, ar_blocks=4, ks=(1, 2, 4, 8), multi_ks=(1, 2, 4, 8),
                     ode_steps=(1, 2, 4, 8, 16, 64), heun_steps=(2, 4, 8), gaussian_ks=(2, 4),
                     teacher_steps=teacher_steps, teacher_curve=TEACHER_CURVE_FRACTIONS)
    models = _finetune_family(family, "toy", PRESETS["toy-finetune"],
                              finetune_steps=finetune_steps or max(1, train_steps // 2), seed=seed, tiny=tiny,
                              posterior_ks=(2, 4), finetune_k=4, multi_ks=(2, 4, 8), guidance=(), distill_steps=None)
    return Suite("toy", models, num_samples)


def digits_suite(train_steps: int = 1200, seed: int = 0, tiny: bool = False, num_samples: int = 1000,
                 finetune_steps: int | None = None, distill_steps: int | None = None,
                 teacher_steps: int | None = None) -> Suite:
    """Digits with a domain FID. Defaults: ``finetune_steps = train_steps // 2`` (600: the digits-finetune preset),
    ``distill_steps = train_steps // 2``, ``teacher_steps = 4 * train_steps``: flow matching is cheap to train
    (about 20 steps/s on 2 CPU cores) and its Euler@64 FID still falls several-fold from 1,200 to 2,400 steps on
    digits, so the teacher trains on; its curve (Euler@64 at 25/50/100 %, the 25 % point at the from-scratch
    budget) shows how far it has converged."""
    base = PRESETS["digits-ntm"]
    family = _family(base, "digits", train_steps, seed, tiny, ar_blocks=4, ks=(4,), multi_ks=(1, 2, 4, 8),
                     ode_steps=(4, 16, 64), heun_steps=(4,), gaussian_ks=(4,),
                     teacher_steps=teacher_steps or 4 * train_steps, teacher_curve=TEACHER_CURVE_FRACTIONS)
    models = _finetune_family(family, "digits", PRESETS["digits-finetune"],
                              finetune_steps=finetune_steps or max(1, train_steps // 2), seed=seed, tiny=tiny,
                              posterior_ks=(4,), finetune_k=4, multi_ks=(2, 4, 8), guidance=(1.5,),
                              distill_steps=distill_steps or max(1, train_steps // 2))
    comparison = (("teacher-posterior_K4", "teacher posterior @4"), ("finetuned_K4", "finetuned @4"),
                  ("finetuned-learned_K4", "finetuned @4 + learned"), ("flow-matching-euler_K64", "flow matching @64"))
    return Suite("digits", models, num_samples, image_metrics="domain-digits", comparison=comparison)


def paper_suite(train_steps: int = 100_000, seed: int = 0, tiny: bool = False, num_samples: int = 10_000,
                finetune_steps: int | None = None, distill_steps: int | None = None,
                teacher_steps: int | None = None) -> Suite:
    """GPU-sized: the imagenet-paper preset's family; Inception FID from a local weights file (not run in CI).

    No finetuned or learned-denoiser rows (there is no imagenet finetune preset); ``teacher_steps`` sets flow
    matching's budget."""
    if finetune_steps is not None or distill_steps is not None:
        from ntm.experiments.core import UsageError

        raise UsageError("the paper suite has no finetuned or distilled models: drop --finetune-steps/--distill-steps")
    base = PRESETS["imagenet-paper"]
    family = _family(base, "paper", train_steps, seed, tiny, ar_blocks=8, ks=(4,), multi_ks=(1, 2, 4, 8),
                     ode_steps=(4, 16, 64), heun_steps=(4,), gaussian_ks=(4,), teacher_steps=teacher_steps)
    return Suite("paper", family, num_samples, image_metrics="inception")


def generative_params(exp: Experiment, data: DataSource) -> int:
    """Trainable parameters of ``exp``'s model, its condition encoder (shared by every model of a suite) excluded."""
    model = build_model(exp, data)
    encoder = getattr(model, "condition_encoder", None)
    skip = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def closest_in_size(target: int, options: list[Experiment], data: DataSource, what: str,
                    tolerance: float | None = 0.1) -> tuple[Experiment, int]:
    """The option whose :func:`generative_params` is closest to ``target``, and its count; with ``tolerance``, a
    ``ValueError`` when even that one is further than ``tolerance * target`` away."""
    sized = [(abs(n - target), n, exp) for exp in options for n in (generative_params(exp, data),)]
    _, n, best = min(sized, key=lambda t: t[0])
    if tolerance is not None and abs(n - target) > tolerance * target:
        raise ValueError(f"{what}: no option within {tolerance:.0%} of {target} parameters (closest {n})")
    return best, n


SHAPES_PROMPTS = (
    "a star", "a red circle", "a square and a triangle", "three green triangles",
    "an orange cross to the left of a blue circle", "a blue square and a yellow star",
)
"""The captions of the shapes bench's prompt figure (one per GenEval category; data:shapes grammar)."""


def shapes_suite(train_steps: int = 1200, seed: int = 0, tiny: bool = False, num_samples: int = 250,
                 finetune_steps: int | None = None, distill_steps: int | None = None,
                 teacher_steps: int | None = None, guidance: float = 1.5, image_size: int = 16) -> Suite:
    """Text-to-image on ``data:shapes`` at ``image_size`` (16: 16 tokens of 4x4 pixels, which is what lets four
    models train in an hour on 2 CPU cores; the judge is trusted there too, >= 0.956 per category), all models from
    the ``shapes-t2i-ntm`` preset with its text encoder, training budget (``train_steps`` at its batch size) and
    seed, sized to the NTM's parameter count (encoder excluded, within 10 %):

    - ``ntm``: the preset, K = 4 (its score denoiser);
    - ``gaussian``: no transporter, the trajectory predictor deepened to the NTM's size, K = 4;
    - ``flow-matching``: a velocity transformer of the NTM's size on ``x``, Euler at 4 / 16 / 64 steps;
    - ``ar-flow``: one autoregressive flow in the deep-shallow form (TarFlow at the predictor's width, 4 blocks:
      3 shallow ones of 2 layers, or of 1 where 2 are already too many, and the block nearest the prior deepened
      to the size), trained as an NTM with K = 1 (a depth-1 predictor gives the prior of ``x_{t_0}``), score
      denoised.

    Every point is scored unguided and at ``guidance`` (``-w<weight>`` rows), on ``num_samples`` captions of
    each held-out split (seen and unseen colour-shape pairs), with a domain FID from a shapes classifier."""
    if finetune_steps is not None or distill_steps is not None or teacher_steps is not None:
        from ntm.experiments.core import UsageError

        raise UsageError("the shapes suite trains every model from scratch on one budget: drop --finetune-steps, "
                         "--distill-steps and --teacher-steps")
    base = PRESETS["shapes-t2i-ntm"]
    base = base.replace(data=base.data.replace(image_size=image_size))
    if tiny:  # 16-pixel scenes, few of them: a smoke test renders little
        base = base.replace(data=base.data.replace(image_size=16, train_size=256, eval_size=32))
    data = base.data.build()
    v = lambda name, steps, **u: _variant(base, f"shapes-{name}", steps=steps, train_steps=train_steps,  # noqa: E731
                                          seed=seed, tiny=tiny, **u)
    ntm = v("ntm-K4", (4,))
    target = generative_params(ntm, data)
    predictor = ntm.model.predictor
    tolerance = None if tiny else 0.1
    depths = range(1, 4 * predictor.depth + 1)
    gaussian, _ = closest_in_size(target, [v("gaussian-K4", (4,), transporter=IdentityConfig(),
                                             predictor=predictor.replace(depth=d)) for d in depths],
                                  data, "shapes gaussian", tolerance)

    def velocity(depth: int) -> PosteriorPredictorConfig:
        return PosteriorPredictorConfig(learned_scale=False, xhat=VelocityTransformerConfig(
            depth=depth, width=predictor.width, num_heads=predictor.num_heads, mlp_ratio=predictor.mlp_ratio))

    fm_options = [v("flow-matching", (4,), transporter=IdentityConfig(), predictor=velocity(d),
                    loss=FlowMatchingConfig(), sampler=EulerConfig(num_steps=64), denoiser=NoDenoiserConfig())
                  for d in depths]
    fm, _ = closest_in_size(target, fm_options, data, "shapes flow matching", tolerance)
    ar_flow = ntm.model.transporter.replace(width=predictor.width, num_heads=predictor.num_heads, num_blocks=4)
    ar_options = [v("ar-flow", (1,), transporter=ar_flow.replace(layers_per_block=shallow, deep_layers=d),
                    predictor=predictor.replace(depth=1))
                  for shallow in (2, 1) for d in range(shallow + 1, shallow + 4 * predictor.depth + 1)]
    ar, _ = closest_in_size(target, ar_options, data, "shapes AR flow", tolerance)
    g = (guidance,) if guidance else ()
    ode = lambda n: _ode_point(EulerConfig(num_steps=n), "euler")  # noqa: E731
    models = (
        BenchModel("ntm", ntm, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("gaussian", gaussian, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("flow-matching", fm, tuple(p for n in (4, 16, 64) for p in _with_guidance(ode(n), g)),
                   likelihood=False),
        BenchModel("ar-flow", ar, _with_guidance(EvalPoint(1, None), g)),
    )
    return Suite("shapes", models, num_samples, image_metrics="domain-shapes", reference_size=1000,
                 text_eval=True, prompts=SHAPES_PROMPTS)


def latent_suite(train_steps: int = 500, seed: int = 0, tiny: bool = False, num_samples: int = 250,
                 finetune_steps: int | None = None, distill_steps: int | None = None,
                 teacher_steps: int | None = None, guidance: float = 1.5) -> Suite:
    """Pixel vs latent NTM@4 on the same data (``data:shapes`` at 32x32, captions through the small text encoder)
    and the same training wall time:

    - ``pixel-ntm``: ``shapes-t2i-ntm`` at 32x32 (patch 4: 64 tokens of 48 values), ``train_steps`` steps;
    - ``latent-ntm``: ``shapes-latent-ntm`` (the x4 autoencoder of ``shapes-ae``, trained first under
      ``DIR/runs/shapes-ae``: 4 x 8x8 latents, patch 2: 16 tokens of 16 values), trained for the pixel model's
      wall time.

    Both scored unguided and at ``guidance`` by the shapes-eval judge (32x32) and a domain FID against real
    pixels; wall ms per sample includes decoding; the rows carry the training throughput (examples/s) and, for
    the latent model, the cycle PSNR of its decoded samples and the autoencoder's own figures."""
    from ntm.experiments.autoencoder import AE_PRESETS

    if finetune_steps is not None or distill_steps is not None or teacher_steps is not None:
        from ntm.experiments.core import UsageError

        raise UsageError("the latent suite trains two models from scratch: drop --finetune-steps, --distill-steps "
                         "and --teacher-steps")
    pixel_base = PRESETS["shapes-t2i-ntm"]
    pixel_base = pixel_base.replace(data=pixel_base.data.replace(image_size=32))
    latent_base = PRESETS["shapes-latent-ntm"]
    autoencoder = AE_PRESETS["shapes-ae"]
    if tiny:  # few scenes, a minimal autoencoder
        small = dict(train_size=256, eval_size=32)
        pixel_base = pixel_base.replace(data=pixel_base.data.replace(**small))
        latent_base = latent_base.replace(data=latent_base.data.replace(**small))
        autoencoder = autoencoder.replace(data=latent_base.data, autoencoder=autoencoder.autoencoder.replace(width=8),
                                          train=autoencoder.train.replace(steps=10, warmup_steps=2),
                                          eval=autoencoder.eval.replace(num_examples=32, stats_examples=64))
    pixel = _variant(pixel_base, "shapes32-pixel-ntm-K4", steps=(4,), train_steps=train_steps, seed=seed, tiny=tiny)
    latent = _variant(latent_base, "shapes32-latent-ntm-K4", steps=(4,), train_steps=train_steps, seed=seed,
                      tiny=tiny)
    g = (guidance,) if guidance else ()
    models = (
        BenchModel("pixel-ntm", pixel, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("latent-ntm", latent, _with_guidance(EvalPoint(4, 4), g), autoencoder=autoencoder,
                   match_wall_of=pixel.name, probe_steps=3 if tiny else 20),
    )
    return Suite("latent", models, num_samples, image_metrics="domain-shapes", reference_size=1000,
                 text_eval=True, prompts=SHAPES_PROMPTS[:4])


SUITES: dict[str, Callable[..., Suite]] = {"toy": toy_suite, "digits": digits_suite, "paper": paper_suite,
                                          "shapes": shapes_suite, "latent": latent_suite}


# -- running ----------------------------------------------------------------------
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


def _with_autoencoder(exp: Experiment, ae: Any, out: Path, device: str) -> tuple[Experiment, dict[str, Any]]:
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


def _train_wall(exp: Experiment) -> float | None:
    record = Path(exp.resolved_run_dir) / TRAIN_RECORD
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("steps") == exp.train.steps:
            return float(saved["wall_s"])
    return None


def _record_wall(exp: Experiment, seconds: float) -> None:
    if _train_wall(exp) is None:
        record = Path(exp.resolved_run_dir) / TRAIN_RECORD
        record.write_text(json.dumps({"steps": exp.train.steps, "wall_s": seconds}) + "\n")


def _matching_wall(exp: Experiment, data: DataSource, wall: float, probe_steps: int,
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
            exp, extra["autoencoder"] = _with_autoencoder(exp, bm.autoencoder, out, device)
        data = data_for(exp)
        if bm.match_wall_of is not None:
            exp, extra["wall_budget_s"] = _matching_wall(exp, data, walls[bm.match_wall_of], bm.probe_steps, out)
        started = time.monotonic()
        model = train_or_reuse(exp, data)
        train_seconds = time.monotonic() - started
        finals[exp.name] = CheckpointManager(Path(exp.resolved_run_dir) / "checkpoints").latest_path()
        _record_wall(exp, train_seconds)
        walls[bm.experiment.name] = _train_wall(exp) or train_seconds
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


def write_prompt_figure(path: Path, prompts: tuple[str, ...], samples: dict[str, torch.Tensor],
                        per_prompt: int) -> Path:
    """One row per prompt (the caption above it), each row the rows' samples side by side in the order of
    ``samples``; the first caption also names the column blocks."""
    from ntm.viz import captioned_rows

    names = list(samples)
    rows = []
    for i, prompt in enumerate(prompts):
        images = torch.cat([samples[name][i * per_prompt : (i + 1) * per_prompt] for name in names])
        caption = f"{prompt!r}   columns: {' | '.join(names)}" if i == 0 else repr(prompt)
        rows.append((caption, images))
    upscale = max(1, 64 // next(iter(samples.values())).shape[-1])
    return save_png(captioned_rows(rows, upscale=upscale), path)


def write_comparison(out: Path, panels: tuple[tuple[str, str], ...]) -> Path | None:
    """``out/figures/compare.png`` from the bench's per-row sample figures (None when one is missing)."""
    paths = [out / "figures" / f"samples_{key}.png" for key, _ in panels]
    if not panels or not all(p.is_file() for p in paths):
        return None
    return save_png(titled_row([(title, load_png(p)) for (_, title), p in zip(panels, paths)]),
                    out / "figures" / "compare.png")


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


# -- reporting -----------------------------------------------------------------------
CURVE_KEYS = ("finetune_steps", "teacher_steps")
"""Row fields that mark a curve row (and hold its checkpoint's step)."""


def _curve_key(row: dict) -> str | None:
    return next((k for k in CURVE_KEYS if k in row), None)


def results_table(rows: list[dict]) -> str:
    """The main table (one line per model and evaluation point), then one table per curve."""
    main = [r for r in rows if _curve_key(r) is None]
    text = _table(main, ("model", "K", "nfe", "train_steps"))
    for key in CURVE_KEYS:
        for name in dict.fromkeys(r["model"] for r in rows if key in r):
            text += f"\n{name} ({key}):\n\n" + _table([r for r in rows if r["model"] == name], (key, "K", "nfe"))
    return text


def shapes_table(rows: list[dict]) -> str:
    """The text-to-image rows in brief: judge scores (overall seen / unseen and their ratio, then per category on
    the seen split), domain FID, parameters (text encoder excluded) and wall ms per sample."""
    from ntm.eval.shapes_judge import CATEGORIES

    head = ["model", "K", "nfe", "guidance", "seen", "unseen", "unseen/seen", *CATEGORIES, "fid", "params",
            "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        cells = [r["model"], str(r["K"]), str(r["nfe"]), f"{r['guidance']:g}",
                 *(_fmt(m.get(k)) for k in ("shapes_seen_overall", "shapes_unseen_overall", "unseen_vs_seen")),
                 *(_fmt(m.get(f"shapes_seen_{c}")) for c in CATEGORIES), _fmt(m.get("fid")),
                 f"{r['params'] / 1e6:.2f} M" if "params" in r else "–", _fmt(r["wall_ms_per_sample"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latent_table(rows: list[dict]) -> str:
    """Pixel vs latent rows in brief: space, domain FID, judge (seen), wall ms per sample (decoding included),
    training steps, wall and throughput, the cycle PSNR of decoded samples; then the autoencoder's line."""
    head = ["model", "space", "K", "guidance", "fid", "seen", "unseen", "ms/sample", "train steps", "train wall s",
            "train examples/s", "cycle PSNR dB", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        cells = [r["model"], r.get("space", "–"), str(r["K"]), f"{r['guidance']:g}", _fmt(m.get("fid")),
                 _fmt(m.get("shapes_seen_overall")), _fmt(m.get("shapes_unseen_overall")),
                 _fmt(r["wall_ms_per_sample"]), str(r["train_steps"]), _fmt(r.get("train_wall_s")),
                 _fmt(r.get("train_examples_per_s")), _fmt(m.get("cycle_psnr_db")),
                 f"{r['params'] / 1e6:.2f} M" if "params" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for ae in dict((str(r["autoencoder"]), r["autoencoder"]) for r in rows if r.get("autoencoder")).values():
        lines.append(f"\nautoencoder {ae.get('fingerprint')}: latents {ae.get('latent_shape')} "
                     f"({_fmt(ae.get('compression'))}x fewer numbers), held-out reconstruction PSNR "
                     f"{_fmt(ae.get('psnr'))} dB, cycle {_fmt(ae.get('cycle_psnr'))} dB, KL "
                     f"{_fmt(ae.get('kl_per_latent_dim'))} nats/dim, trained in {_fmt(ae.get('wall_seconds'))} s "
                     "(not in the models' wall budget)")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    keys = sorted({k for r in rows for k in r["metrics"]})
    head = [*columns, *keys, "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r[c]) for c in columns]
        vals += [_fmt(r["metrics"].get(k)) for k in keys]
        vals.append(_fmt(r["wall_ms_per_sample"]))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def quality_key(rows: list[dict]) -> str:
    for key in ("fid", "energy_distance"):
        if any(key in r["metrics"] for r in rows):
            return key
    return next(iter(rows[0]["metrics"]))


def plot(rows: list[dict], out: Path) -> None:
    """Quality vs NFE and vs wall time, one line per model family; quality along each curve
    (``<quality>_vs_finetune_steps.png``, ``<quality>_vs_teacher_steps.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = quality_key(rows)
    main = [r for r in rows if _curve_key(r) is None]
    for xkey, fname, xlabel in (("nfe", "quality_vs_nfe.png", "NFE"),
                                ("wall_ms_per_sample", "quality_vs_wall.png", "wall ms per sample")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        families: dict[str, list[tuple[float, float]]] = {}
        for r in main:
            if key in r["metrics"]:
                families.setdefault(r["model"], []).append((r[xkey], r["metrics"][key]))
        for family, pts in sorted(families.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=family)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)
    for ckey in CURVE_KEYS:
        curve = sorted((r[ckey], r["metrics"][key]) for r in rows if ckey in r and key in r["metrics"])
        if not curve:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o",
                label=next(r["model"] for r in rows if ckey in r))
        if ckey == "finetune_steps":  # the references: the teacher's posterior sampler and its ODE at the most steps
            for ref in ("teacher-posterior", "flow-matching-euler"):
                found = [r for r in main if r["model"] == ref and key in r["metrics"]]
                if found:
                    best = max(found, key=lambda r: r["K"])
                    ax.axhline(best["metrics"][key], ls="--", lw=1, color="grey" if ref == "teacher-posterior" else "k",
                               label=f"{ref} @{best['K']}")
        ax.set_xlabel(ckey.replace("_", " "))
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{key}_vs_{ckey}.png")
        plt.close(fig)
