"""The bench's suites: the models ``ntm bench toy|digits|paper`` trains, side by side, and how each is evaluated.

A suite is a list of :class:`BenchModel` s (an experiment each, all built from
the same preset with the same training budget and seed) and, per model, the
evaluation points (a sampler setting: K for NTM-style models, ODE steps for
flow matching; optionally a guidance weight and a denoiser).

A model may start from an earlier model's weights (``init_from``: the
finetuned NTMs start from the suite's flow-matching model, the teacher), have
its learned one-pass denoiser distilled in-process (``distill_steps``), and be
evaluated along its training (``curve``: kept intermediate checkpoints, step 0
being the initialised model). :func:`ntm.experiments.bench.runner.run_suite` trains and scores a suite; the
text-to-image suites (shapes, latent) are in :mod:`ntm.experiments.bench.shapes`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from ntm.data.base import DataSource
from ntm.denoisers import DenoiserConfig, LearnedDenoiserConfig, NoDenoiserConfig, ScoreDenoiserConfig
from ntm.experiments.build import build_model
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.losses import FlowMatchingConfig
from ntm.predictors import GaussianHeadConfig, PosteriorPredictorConfig, PredictorConfig, VelocityTransformerConfig
from ntm.registry import ComponentConfig
from ntm.samplers import AncestralConfig, EulerConfig, HeunConfig, ODEConfig, SamplerConfig
from ntm.transporters import IdentityConfig, TransporterConfig


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
    """An :class:`~ntm.experiments.autoencoder.AutoencoderExperiment` trained (or reused when its ``autoencoder.pt``
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
    by the shapes-eval judge (:func:`ntm.experiments.t2i.shapes_eval`: seen and unseen splits, ``num_samples`` each);
    image metrics compare the seen split's samples with the reference."""
    prompts: tuple[str, ...] = ()
    """Captions of ``figures/prompts.png``: one row per caption, every row's samples from the same seed, one
    column block per evaluated row of the suite (text suites)."""
    per_prompt: int = 2
    """Samples per caption and row in ``figures/prompts.png``."""


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
