"""``ntm distill``: train a run's learned one-pass denoiser (docs/math.md §8) against its frozen NTM.

    ntm distill --run runs/digits-ntm                 # -> runs/digits-ntm/denoiser/
    ntm distill --run runs/digits-ntm --steps 4000 --resume
    ntm sample --run runs/digits-ntm --denoiser learned

The project's training loop does the work (:func:`ntm.train.loop.train`):
the trained module is :class:`~ntm.denoisers.learned.Distillation`, ``D_phi``
next to the run's NTM (EMA weights, frozen, outside the module tree, so
neither optimised nor saved again), the objective
:class:`~ntm.denoisers.learned.DistillationLoss`. So checkpoints, ``--resume``,
``metrics.jsonl``, TensorBoard and the non-finite guard behave as in
``ntm train``. ``<run>/denoiser/`` holds ``config.json`` (a
:class:`DistillConfig`), ``checkpoints/`` and ``final.json``: the held-out MSE
and PSNR of ``D_phi`` against the §7 estimate on real-data trajectories, and
on sampled trajectories from the same ``u_0``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch

from ntm.atomic import atomic_write_text
from ntm.experiments.build import conditioner_of, dims_for, layout_for
from ntm.experiments.core import UsageError
from ntm.experiments.runs import load_run, read_json_file
from ntm.experiments.config import Experiment
from ntm.conditioning.base import heldout_condition
from ntm.data.base import DataError, DataSource
from ntm.denoisers import LearnedDenoiser, LearnedDenoiserConfig, ScoreDenoiser
from ntm.denoisers.learned import DENOISER_DIR, Distillation, DistillationLoss, distilled_config
from ntm.forward import interpolant as I
from ntm.nn.tokens import TokenLayout
from ntm.train.checkpoint import CheckpointManager
from ntm.train.config import TrainConfig
from ntm.train.loop import TrainJob, train
from ntm.registry import ComponentConfig
from ntm.registry.cli import config_error


class DistillEvalConfig(ComponentConfig):
    num_examples: int = pydantic.Field(512, ge=1)
    """Held-out examples (and at most this many sampled ones) for final.json's MSE and PSNR."""
    batch_size: int = pydantic.Field(128, ge=1)
    """Evaluation batch size."""
    seed: int = 1234
    """Seed of the evaluation trajectories and samples."""


class DistillConfig(ComponentConfig):
    """``<run>/denoiser/config.json``: what a distillation was run with (compared on ``--resume``)."""

    network: LearnedDenoiserConfig = LearnedDenoiserConfig()
    """Architecture of D (its weights field is unused here). Must match on --resume (the loop lets a field named
    'denoiser' change, hence this name)."""
    dims: dict[str, int]
    """Token geometry of the run's model: num_tokens, token_dim, num_classes (and cond_dim, cond_len when encoded)."""
    steps: tuple[int, ...]
    """Step counts K whose trajectories make the targets (each batch draws one)."""
    teacher: str
    """The NTM checkpoint (file name in <run>/checkpoints) whose EMA weights make the targets."""
    train: TrainConfig
    """Optimisation of D."""
    eval: DistillEvalConfig = DistillEvalConfig()
    """Evaluation for final.json."""


@dataclasses.dataclass(frozen=True)
class DistillArgs:
    run: Path
    """Run directory of a trained NTM (config.json, checkpoints/); the denoiser goes to <run>/denoiser/."""
    steps: int | None = None
    """Optimizer steps (default: 2000; on --resume: the saved setting)."""
    lr: float | None = None
    """Peak learning rate (default: 1e-3)."""
    batch_size: int | None = None
    """Batch size (default: the run's train.batch_size)."""
    width: int | None = None
    """Hidden width of D (default: the run's denoiser config if it is 'learned', else 128)."""
    depth: int | None = None
    """Transformer layers of D (default as for width; 4)."""
    num_heads: int | None = None
    """Attention heads of D (default as for width; 4)."""
    checkpoint: Path | None = None
    """The NTM checkpoint to distill (default: the run's newest); its EMA weights are used."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where to train (default: the run's train.device)."""
    num_eval: int | None = None
    """Examples for final.json's MSE and PSNR (default: 512)."""
    resume: bool = False
    """Continue the distillation in <run>/denoiser/ (flags not given keep their saved values)."""


def _base_config(args: DistillArgs, exp: Experiment, out: Path, dims: dict[str, int], teacher: str) -> DistillConfig:
    """The saved config on ``--resume`` (when there is one), else defaults from the run."""
    saved = out / "config.json"
    if args.resume and saved.is_file():
        try:
            return DistillConfig.model_validate(read_json_file(saved, "distillation config"))
        except pydantic.ValidationError as e:
            raise UsageError(f"{saved} is not a distillation config ({type(e).__name__}); delete {out} to start over") from None
    run_train = exp.train
    denoiser = exp.denoiser if isinstance(exp.denoiser, LearnedDenoiserConfig) else LearnedDenoiserConfig()
    train_cfg = TrainConfig(
        steps=2000, batch_size=run_train.batch_size, lr=1e-3, warmup_steps=0.025, sample_every=0, checkpoint_every=250,
        seed=run_train.seed, device=run_train.device, precision=run_train.precision, parallel=run_train.parallel,
        threads=run_train.threads,
    )
    return DistillConfig(network=denoiser.replace(weights=None), dims=dims, steps=exp.model.process.steps,
                         teacher=teacher, train=train_cfg)


def _apply_flags(cfg: DistillConfig, args: DistillArgs, teacher: str) -> DistillConfig:
    train_updates = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                                        ("device", args.device)) if v is not None}
    arch = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("num_heads", args.num_heads)) if v is not None}
    try:
        return cfg.replace(
            teacher=teacher, train=cfg.train.replace(**train_updates), network=cfg.network.replace(**arch),
            eval=cfg.eval if args.num_eval is None else cfg.eval.replace(num_examples=args.num_eval),
        )
    except pydantic.ValidationError as e:
        raise config_error(e) from None


def distill(a: DistillArgs) -> dict[str, Any] | None:
    """``ntm distill`` in-process: train ``a.run``'s learned denoiser into ``<run>/denoiser/``.

    Returns what ``final.json`` holds (``None`` on ranks other than 0); raises :class:`UsageError` like the command.
    """
    run = Path(a.run)
    exp, data, teacher = load_run(run, a.checkpoint)  # one-line errors when the run has no config or no trained NTM
    checkpoint = a.checkpoint or CheckpointManager(run / "checkpoints").latest_path()
    out = run / DENOISER_DIR
    existing = CheckpointManager(out / "checkpoints").latest_path()
    if existing is not None and not a.resume:
        raise UsageError(f"{out} already holds a distilled denoiser ({existing.name}); pass --resume to continue it, "
                         f"or delete {out} to distill again")
    layout = layout_for(exp, data)
    dims = dims_for(exp, data)
    cfg = _base_config(a, exp, out, distilled_config(LearnedDenoiserConfig(), dims)["dims"], Path(checkpoint).name)
    cfg = _apply_flags(cfg, a, Path(checkpoint).name)

    loss = DistillationLoss(cfg.steps)
    job = TrainJob(
        build_model=lambda: Distillation(cfg.network.network(dims), teacher),
        objective=loss,
        data=data,
        layout=layout,
        conditioner=conditioner_of(exp.conditioner),
        train=cfg.train,
        run_dir=out,
        config=cfg.model_dump(mode="json"),
        resume=a.resume,
    )
    result = train(job)
    if result.ema_model is None:  # not rank 0
        return None
    started = time.monotonic()
    distilled: Distillation = result.ema_model
    try:
        heldout = heldout_errors(distilled, loss, data, layout, cfg.eval,
                                 conditioner=conditioner_of(exp.conditioner))
    except DataError as e:
        print(f"ntm distill: note: no held-out errors: {e}", flush=True)
        heldout = {}
    sampled = sampled_errors(exp, distilled, data, layout, cfg.eval)
    final = {
        "steps": result.steps,
        "teacher": cfg.teacher,
        "last_loss": result.last_loss,
        "mse": heldout.get(str(max(cfg.steps)), {}).get("mse"),
        "psnr_db": heldout.get(str(max(cfg.steps)), {}).get("psnr_db"),
        "heldout": heldout,
        "sampled": sampled,
        "wall_seconds": result.wall_seconds,
        "examples_per_second": result.examples_per_second,
        "eval_seconds": time.monotonic() - started,
    }
    atomic_write_text(out / "final.json", json.dumps(final, indent=2) + "\n")
    print(f"distilled {run}: {result.steps} steps in {result.wall_seconds:.1f}s -> {out}")
    for k, v in heldout.items():
        print(f"held-out K={k}: D vs score-denoised mse {v['mse']:.3g}, PSNR {v['psnr_db']:.2f} dB "
              f"(x_t0/alpha: {v['psnr_x_t0_db']:.2f} dB; {v['examples']} examples)")
    if sampled:
        print(f"sampled K={sampled['K']}: D vs score-denoised PSNR {sampled['psnr_db']:.2f} dB from the same u_0 "
              f"({sampled['examples']} samples)")
    print(f"sample with: ntm sample --run {run} --denoiser learned")
    return final


# -- evaluation ---------------------------------------------------------------------
def _psnr(mse: float, peak: float) -> float:
    return 10 * math.log10(max(peak, 1e-12) ** 2 / max(mse, 1e-30))  # finite, so final.json stays strict JSON


class _Errors:
    """Running squared errors in display space (what PSNR is about) and the targets' display range."""

    def __init__(self, data: DataSource, layout: TokenLayout) -> None:
        self.data, self.layout = data, layout
        self.sums: dict[str, float] = {}
        self.count, self.low, self.high = 0, math.inf, -math.inf

    def show(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.data.to_display(self.layout.from_tokens(tokens.detach().float().cpu()))

    def add(self, target: torch.Tensor, **estimates: torch.Tensor) -> None:
        shown = self.show(target)
        self.low, self.high = min(self.low, shown.min().item()), max(self.high, shown.max().item())
        for name, estimate in estimates.items():
            self.sums[name] = self.sums.get(name, 0.0) + (self.show(estimate) - shown).square().sum().item()
        self.count += shown.numel()

    def report(self, examples: int) -> dict[str, float]:
        peak = self.high - self.low
        out: dict[str, float] = {"examples": examples, "peak": peak}
        for name, total in self.sums.items():
            mse = total / self.count
            out["mse" if name == "D" else f"mse_{name}"] = mse
            out["psnr_db" if name == "D" else f"psnr_{name}_db"] = _psnr(mse, peak)
        return out


@torch.no_grad()
def heldout_errors(distilled: Distillation, loss: DistillationLoss, data: DataSource, layout: TokenLayout,
                   cfg: DistillEvalConfig, conditioner=None) -> dict[str, dict[str, float]]:
    """Per K: D's output against the §7 estimate on forward trajectories of held-out data (true conditions).

    ``conditioner`` (the run's) reads the true condition without dropout; without one, the labels.

    MSE and PSNR in display space (images in [0, 1]); the PSNR peak is the range of the displayed targets.
    ``x_t0`` rows are the rescaled sample ``x_{t_0} / alpha(t_0)`` for scale.
    """
    teacher = distilled.teacher
    device = next(distilled.parameters()).device
    results: dict[str, dict[str, float]] = {}
    for k in loss.steps:
        gen = torch.Generator(device=device).manual_seed(cfg.seed + k)
        errors, examples = _Errors(data, layout), 0
        for batch in data.eval_batches(cfg.batch_size, max_examples=cfg.num_examples):
            x = layout.to_tokens(batch.x.to(device))
            cond = heldout_condition(conditioner, batch, teacher.dims.num_classes, device)
            cond = loss.encode(teacher, cond, x.shape[0])  # what the targets and D read
            u0, times, target, x_t0 = loss.targets(teacher, x, cond, gen, num_steps=k)
            d_out = distilled.net(u0, times[0].expand(u0.shape[0]), cond)
            errors.add(target, D=d_out, x_t0=x_t0 / I.alpha(times[0]))
            examples += x.shape[0]
        if examples == 0:
            raise DataError("the data source has no held-out examples")
        results[str(k)] = errors.report(examples)
    return results


def sampled_errors(exp: Experiment, distilled: Distillation, data: DataSource, layout: TokenLayout,
                   cfg: DistillEvalConfig) -> dict[str, Any]:
    """D(u_0) against the §7 estimate on the same sampled trajectories (the run's sampler, decoded levels).

    Empty when the run's sampler gives no u-trajectory (an x-space ODE sampler).
    """
    teacher = distilled.teacher
    device = next(distilled.parameters()).device
    sampler = exp.sampler.build()
    learned = LearnedDenoiser(net=distilled.net)
    score = ScoreDenoiser()
    n_total = min(cfg.num_examples, 256)
    errors, done, times = _Errors(data, layout), 0, None
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    while done < n_total:
        n = min(cfg.batch_size, n_total - done)
        cond = torch.arange(done, done + n, device=device) % teacher.dims.num_classes if teacher.dims.num_classes else None
        out = sampler(teacher, n, cond, generator=gen, return_trajectory=True)
        if out.u_trajectory is None:
            return {}
        target = score(teacher, out.x_trajectory, out.times, cond)
        with torch.no_grad():
            errors.add(target, D=learned.from_u0(teacher, out.u_trajectory[0], out.times, cond),
                       x_t0=out.x / I.alpha(out.times[0]))
        done, times = done + n, out.times
    return {"K": times.numel() - 1, **errors.report(done)}


__all__ = [
    "DistillArgs", "DistillConfig", "DistillEvalConfig", "distill", "heldout_errors",
    "sampled_errors",
]
