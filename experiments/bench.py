"""``ntm bench SUITE --out DIR``: baselines and NTM side by side, same budget and seed, one run.

A suite is a list of :class:`BenchModel` s (an experiment each, all built from
the same preset with the same training budget and seed) and, per model, the
evaluation points (a sampler setting: K for NTM-style models, ODE steps for
flow matching). For each model the bench trains (or reuses a finished run
with the identical config), then scores likelihood, sample quality and cost.

Outputs in ``DIR``: ``results.json`` (a list of rows
``{suite, dataset, model, K, nfe, seed, train_steps, metrics, wall_ms_per_sample}``),
``results.md``, plots of quality vs NFE and vs wall time, one sample figure per
model, and for 2-D suites ``mixture.json`` plus ``samples_<model>_K<k>.npy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from eval.metrics import energy_distance, mmd_rbf, oracle_log_density
from eval.nll import heldout_nll
from eval.oracle import oracle_gap
from eval.timing import measure
from experiments.build import build_denoiser, build_model, layout_for, picture, train_job
from experiments.config import Experiment
from experiments.presets import PRESETS
from ntm.data.base import DataSource
from ntm.denoisers import NoDenoiserConfig, ScoreDenoiserConfig
from ntm.losses import FlowMatchingConfig
from ntm.predictors import PosteriorPredictorConfig, PredictorConfig, VelocityTransformerConfig
from ntm.samplers import EulerConfig, HeunConfig, ODEConfig, SamplerConfig
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, load_sampling_weights
from ntm.train.logging import Progress
from ntm.train.loop import train
from ntm.transporters import IdentityConfig, TransporterConfig
from ntm.viz import save_png
from registry import ComponentConfig


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
    """Suffix for the row's model name (e.g. ``heun``)."""


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str
    experiment: Experiment
    points: tuple[EvalPoint, ...]
    likelihood: bool = True
    """Score held-out trajectory NLL at each K (models with an NTM likelihood)."""


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[BenchModel, ...]
    num_samples: int
    """Samples drawn per evaluation point."""
    image_metrics: Literal["none", "domain-digits", "inception"] = "none"
    """FID/KID/precision/recall features: a domain classifier trained on digits, or Inception (local weights)."""
    reference_size: int = 1500
    """Reference images for image metrics (drawn from the training split)."""


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
    return base.replace(name=name, model=net, train=train, eval=evaluation, **updates)


def _ode_point(sampler: ODEConfig, label: str) -> EvalPoint:
    """An evaluation point of an ODE sampler: ``sampler.num_steps`` steps, NFE counted by the sampler class."""
    return EvalPoint(sampler.num_steps, sampler.build().nfe(sampler.num_steps), sampler, label)


def _family(base: Experiment, prefix: str, train_steps: int, seed: int, tiny: bool, ar_blocks: int,
            ks: tuple[int, ...], multi_ks: tuple[int, ...], ode_steps: tuple[int, ...], heun_steps: tuple[int, ...],
            gaussian_ks: tuple[int, ...]) -> tuple[BenchModel, ...]:
    """The models of one suite, from one preset: NTM per K, Gaussian baselines, flow matching, AR flow, multi-K."""
    v = lambda name, steps, **u: _variant(base, f"{prefix}-{name}", steps=steps, train_steps=train_steps,  # noqa: E731
                                          seed=seed, tiny=tiny, **u)
    predictor = base.model.predictor
    models = [BenchModel("ntm", v(f"ntm-K{k}", (k,)), (EvalPoint(k, k),)) for k in ks]
    models.append(BenchModel("ntm-multi-k", v("ntm-multi-k", multi_ks), tuple(EvalPoint(k, k) for k in multi_ks)))
    for k in gaussian_ks:
        models.append(BenchModel("gaussian", v(f"gaussian-K{k}", (k,), transporter=IdentityConfig()), (EvalPoint(k, k),)))
        sigma = v(f"gaussian-posterior-sigma-K{k}", (k,), transporter=IdentityConfig(),
                  predictor=predictor.replace(sigma="posterior"))
        models.append(BenchModel("gaussian-posterior-sigma", sigma, (EvalPoint(k, k),)))
    # flow matching: a velocity network of the predictor's size on x directly, sampled by an ODE solver
    velocity = PosteriorPredictorConfig(learned_scale=False, xhat=VelocityTransformerConfig(
        depth=predictor.depth, width=predictor.width, num_heads=predictor.num_heads, mlp_ratio=predictor.mlp_ratio))
    fm = v("flow-matching", (max(ks),), transporter=IdentityConfig(), predictor=velocity,
           loss=FlowMatchingConfig(), sampler=EulerConfig(num_steps=max(ode_steps)), denoiser=NoDenoiserConfig())
    points = [_ode_point(EulerConfig(num_steps=n), "euler") for n in ode_steps]
    points += [_ode_point(HeunConfig(num_steps=n), "heun") for n in heun_steps]
    models.append(BenchModel("flow-matching", fm, tuple(points), likelihood=False))
    # K = 1 with a deeper transporter: one AR flow on x_{t_0}; NFE counts its sequential AR steps
    ar = v("ar-flow", (1,), transporter=base.model.transporter.replace(num_blocks=ar_blocks),
           predictor=predictor.replace(depth=1), denoiser=ScoreDenoiserConfig())
    models.append(BenchModel("ar-flow", ar, (EvalPoint(1, None),)))
    return tuple(models)


def toy_suite(train_steps: int = 400, seed: int = 0, tiny: bool = False, num_samples: int = 4000) -> Suite:
    base = PRESETS["toy-ntm"]
    return Suite("toy", _family(base, "toy", train_steps, seed, tiny, ar_blocks=4, ks=(1, 2, 4, 8), multi_ks=(1, 2, 4, 8),
                               ode_steps=(1, 2, 4, 8, 16, 64), heun_steps=(2, 4, 8), gaussian_ks=(2, 4)), num_samples)


def digits_suite(train_steps: int = 1200, seed: int = 0, tiny: bool = False, num_samples: int = 1000) -> Suite:
    base = PRESETS["digits-ntm"]
    return Suite("digits", _family(base, "digits", train_steps, seed, tiny, ar_blocks=4, ks=(4,), multi_ks=(1, 2, 4, 8),
                                   ode_steps=(4, 16, 64), heun_steps=(4,), gaussian_ks=(4,)),
                 num_samples, image_metrics="domain-digits")


def paper_suite(train_steps: int = 100_000, seed: int = 0, tiny: bool = False, num_samples: int = 10_000) -> Suite:
    """GPU-sized: the imagenet-paper preset's family; Inception FID from a local weights file (not run in CI)."""
    base = PRESETS["imagenet-paper"]
    return Suite("paper", _family(base, "paper", train_steps, seed, tiny, ar_blocks=8, ks=(4,), multi_ks=(1, 2, 4, 8),
                                  ode_steps=(4, 16, 64), heun_steps=(4,), gaussian_ks=(4,)),
                 num_samples, image_metrics="inception")


SUITES: dict[str, Callable[..., Suite]] = {"toy": toy_suite, "digits": digits_suite, "paper": paper_suite}


# -- running ----------------------------------------------------------------------
def train_or_reuse(exp: Experiment, data: DataSource) -> torch.nn.Module:
    """The EMA model of a finished run with this exact config, training (or resuming) it if needed."""
    run_dir = Path(exp.resolved_run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    latest = manager.latest_path()
    if latest is not None:
        state = load_checkpoint(latest)
        if state["config"] == exp.model_dump(mode="json") and state["step"] >= exp.train.steps:
            return load_sampling_weights(build_model(exp, data), state, path=latest).eval()
    result = train(train_job(exp, data, resume=latest is not None))
    return result.ema_model


def _sample_fn(exp: Experiment, model, data: DataSource, point: EvalPoint, n: int, device: torch.device, seed: int):
    sampler_cfg = (point.sampler if point.sampler is not None else exp.sampler).replace(num_steps=point.steps)
    sampler_cfg.check_model(exp.model)
    sampler = sampler_cfg.build()
    denoiser = build_denoiser(exp)
    layout = layout_for(exp, data)
    labels = None
    if model.dims.num_classes:
        labels = torch.arange(n, device=device) % model.dims.num_classes

    def run() -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = sampler(model, n, labels, generator=gen, return_trajectory=denoiser.trajectory_request())
        x = denoiser.denoise(model, out, labels)  # decodes only what the denoiser reads
        return layout.from_tokens(x.detach()).float().cpu()

    return run, labels


def run_suite(
    suite: Suite, out: Path, *, device: str = "auto", progress: bool = True, data_overrides: dict[str, Any] | None = None,
    inception_weights: Path | None = None,
) -> list[dict]:
    """Train-or-reuse and evaluate every model of ``suite`` under ``out``; returns the result rows.

    ``data_overrides`` update every model's data config (e.g. shard URLs for the paper suite);
    ``inception_weights`` is the local Inception file for ``image_metrics="inception"``.
    """
    if suite.image_metrics == "inception" and (inception_weights is None or not Path(inception_weights).is_file()):
        raise FileNotFoundError(f"suite {suite.name} needs --inception-weights: a local Inception weights file "
                                f"(got {inception_weights}); nothing is downloaded")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    figures: dict[str, torch.Tensor] = {}
    bar = Progress(len(suite.models), desc=f"bench {suite.name}", enabled=progress, print_every=1)
    extractor = None
    for bm in suite.models:
        exp = bm.experiment.replace(run_dir=str(out / "runs" / bm.experiment.name),
                                    data=bm.experiment.data.replace(**(data_overrides or {})),
                                    train=bm.experiment.train.replace(device=device))
        data = exp.data.build()
        started = time.monotonic()
        model = train_or_reuse(exp, data)
        train_seconds = time.monotonic() - started
        dev = next(model.parameters()).device
        layout = layout_for(exp, data)
        if suite.image_metrics == "domain-digits" and extractor is None:
            from eval.fidelity import domain_extractor_for_digits

            extractor = domain_extractor_for_digits()
        elif suite.image_metrics == "inception":
            extractor = ("inception-v3-compat", {"weights_path": str(inception_weights)})
        if data.spec.kind == "images":  # the training images (one epoch's worth) as the FID reference
            reference = next(data.train_batches(suite.reference_size, seed=10_000)).x
        else:
            reference = torch.cat([b.x for b in data.eval_batches(4096)])
        for point in bm.points:
            metrics: dict[str, float] = {}
            if bm.likelihood:
                nll = heldout_nll(model, data, layout, [point.steps], batch_size=exp.eval.batch_size,
                                  max_examples=exp.eval.num_examples, seed=exp.eval.seed)[point.steps]
                metrics.update(nll_traj_bpd=nll["nll_traj_bpd"], bound_bpd=nll["bound_bpd"])
                mixture = getattr(data, "mixture", None)
                if mixture is not None:
                    gap = oracle_gap(model, mixture, point.steps, num_examples=8192, seed=exp.eval.seed)
                    metrics.update(oracle_gap_bpd=gap["gap_bpd"], oracle_nll_bpd=gap["oracle_bpd"])
            run, _ = _sample_fn(exp, model, data, point, suite.num_samples, dev, exp.eval.seed)
            samples = run()  # also the warm-up of the timed call below
            cost = measure(run, repeats=1, warmup=0, device=dev, n=suite.num_samples)
            metrics.update(_quality(suite, data, samples, reference, extractor))
            metrics["peak_mem_mb"] = cost["peak_mem_mb"]
            name = bm.name + (f"-{point.label}" if point.label else "")
            rows.append({
                "suite": suite.name, "dataset": data.__class__.__name__.lower(), "model": name, "K": point.steps,
                "nfe": point.nfe if point.nfe is not None else layout.num_tokens * exp.model.transporter.num_blocks,
                "seed": exp.train.seed, "train_steps": exp.train.steps, "metrics": metrics,
                "wall_ms_per_sample": cost["wall_ms_per_sample"], "train_seconds": train_seconds,
            })
            if data.spec.kind == "points":
                np.save(out / f"samples_{name}_K{point.steps}.npy", samples.numpy())
            figures[f"{name}_K{point.steps}"] = picture(exp, data, samples[: 100 if data.spec.kind == "images" else None])
        bar.update(1, model=bm.name)
        if hasattr(data, "mixture") and not (out / "mixture.json").exists():
            _write_mixture(out, data, suite)
    bar.close()
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(results_table(rows))
    for key, image in figures.items():
        save_png(image, out / "figures" / f"samples_{key}.png")
    plot(rows, out)
    return rows


def _quality(suite: Suite, data: DataSource, samples: torch.Tensor, reference: torch.Tensor, extractor) -> dict[str, float]:
    if data.spec.kind == "points":
        ref = reference[: samples.shape[0]]
        out = {"energy_distance": energy_distance(samples, ref), "mmd": mmd_rbf(samples, ref)}
        mixture = getattr(data, "mixture", None)
        if mixture is not None:
            out["oracle_log_density"] = oracle_log_density(samples, mixture)
        return out
    from eval.fidelity import fidelity_metrics

    name, kwargs = extractor
    shown, ref = data.to_display(samples).clamp(0, 1), data.to_display(reference).clamp(0, 1)
    return fidelity_metrics(shown, ref, extractor=name, kid_subsets=20, **kwargs)


def _write_mixture(out: Path, data, suite: Suite) -> None:
    schedules = {}
    for bm in suite.models:
        process = bm.experiment.model.process.build()
        for k in bm.experiment.model.process.steps:
            schedules[str(k)] = process.times(k, dtype=torch.float64).tolist()
    (out / "mixture.json").write_text(json.dumps({**data.mixture.to_dict(), "t_schedule": schedules}, indent=2) + "\n")


# -- reporting -----------------------------------------------------------------------
def results_table(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r["metrics"]})
    head = ["model", "K", "nfe", *keys, "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["model"], str(r["K"]), str(r["nfe"])]
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
    """Quality vs NFE and vs wall time, one line per model family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = quality_key(rows)
    for xkey, fname, xlabel in (("nfe", "quality_vs_nfe.png", "NFE"),
                                ("wall_ms_per_sample", "quality_vs_wall.png", "wall ms per sample")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        families: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if key in r["metrics"]:
                families.setdefault(r["model"], []).append((r[xkey] if xkey == "nfe" else r[xkey], r["metrics"][key]))
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
