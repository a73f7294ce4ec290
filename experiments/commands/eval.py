"""``ntm eval --run RUN``: held-out NLL per K; optionally Bayes-rule classification, OOD scores and the shapes judge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import tyro

from ntm.atomic import atomic_write_text
from ntm.eval.nll import heldout_nll
from ntm.experiments.build import conditioner_of, layout_for
from ntm.experiments.core import UsageError, run_tyro
from ntm.experiments.runs import (
    load_experiment, load_run,
)


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run: Path
    """Run directory (holds config.json and checkpoints/)."""
    checkpoint: Path | None = None
    """A specific checkpoint: a file, a checkpoint directory, or an ntm export file (default: the run's newest)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: tuple[int, ...] | None = None
    """Step counts K to score (default: every K trained)."""
    num_examples: int | None = None
    """Held-out examples (default: the run's eval setting)."""
    shapes_eval: bool = False
    """Also score text-to-image samples with the shapes-eval judge (runs on data:shapes): GenEval's six categories
    on captions of the held-out seen and unseen (held-out colour-shape pair) splits -> <run>/shapes_eval.json."""
    num_samples: int = 500
    """Samples per split for --shapes-eval."""
    classify: bool = False
    """Classify the held-out split by Bayes' rule with the run's likelihood (class-conditional runs): accuracy, ECE
    and log-loss, from the trajectory likelihood and from the importance-weighted x_{t_0} bound -> <run>/classify.json."""
    ood: bool = False
    """Out-of-distribution scores (NLL, typicality, likelihood ratio against the unconditional model) of the held-out
    images vs uniform noise, the images flipped and inverted, and grey shapes scenes: AUROC per pair ->
    <run>/ood.json."""
    trajectories: int = 4
    """Forward trajectories per image for --classify and --ood (their log-likelihoods are averaged)."""


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, EvalArgs, prog="ntm eval", argv=args)
    if a.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {a.num_samples}")
    if a.shapes_eval:
        run_exp = load_experiment(Path(a.run) / "config.json")
        if run_exp.conditioner.reads != "caption" or type(run_exp.data).__name__ != "ShapesConfig":
            raise UsageError(f"--shapes-eval needs a caption-conditioned run on data:shapes; {run_exp.name} trains on "
                             f"{type(run_exp.data).__name__} with conditioner {type(run_exp.conditioner).__name__}")
    if a.trajectories < 1:
        raise UsageError(f"--trajectories must be >= 1, got {a.trajectories}")
    if a.classify:
        run_exp = load_experiment(Path(a.run) / "config.json")
        if not getattr(run_exp.conditioner, "model_dims", lambda n: {"num_classes": n})(10).get("num_classes"):
            raise UsageError(f"--classify needs a class-conditional run; {run_exp.name} is not conditioned on class "
                             f"labels (conditioner {type(run_exp.conditioner).__name__})")
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    if a.classify and model.dims.num_classes == 0:
        raise UsageError(f"--classify needs a class-conditional run; {exp.name}'s data has no class labels")
    steps = list(a.steps or exp.eval.steps or exp.model.process.steps)
    nll = heldout_nll(model, data, layout_for(exp, data), steps, batch_size=exp.eval.batch_size,
                      max_examples=a.num_examples or exp.eval.num_examples, seed=exp.eval.seed,
                      conditioner=conditioner_of(exp.conditioner))
    atomic_write_text(Path(a.run) / "eval.json", json.dumps({str(k): v for k, v in nll.items()}, indent=2) + "\n")
    for k, v in nll.items():
        print(f"K={k}: nll_traj_bpd {v['nll_traj_bpd']:.4f}  x_t0 bound {v['bound_bpd']:.4f} bpd ({v['examples']} examples)")
    if a.classify or a.ood:
        from ntm.experiments.likelihood import classify_run, classify_table, ood_run, ood_table

        k = max(steps)
        if a.classify:
            result = classify_run(exp, data, model, num_steps=k, trajectories=a.trajectories,
                                  max_examples=a.num_examples or exp.eval.num_examples)
            atomic_write_text(Path(a.run) / "classify.json", json.dumps(result, indent=2) + "\n")
            print(f"Bayes-rule classification, K={k}, {a.trajectories} trajectories per image, "
                  f"{result['traj']['examples']} held-out examples:\n{classify_table(result)}", end="")
        if a.ood:
            result = ood_run(exp, data, model, num_steps=k, trajectories=a.trajectories,
                             max_examples=a.num_examples or 500)
            atomic_write_text(Path(a.run) / "ood.json", json.dumps(result, indent=2) + "\n")
            print(f"out-of-distribution AUROC (held-out vs each set), K={k}, {result['examples']} images per set; "
                  f"held-out mean NLL {result['nll_bpd']['heldout']:.3f} bits/dim:\n{ood_table(result)}", end="")
    if a.shapes_eval:
        from ntm.experiments.t2i import shapes_eval, shapes_eval_table

        result = shapes_eval(exp, model, data, num_samples=a.num_samples, seed=exp.eval.seed)
        atomic_write_text(Path(a.run) / "shapes_eval.json", json.dumps(result, indent=2) + "\n")
        print(shapes_eval_table(result), end="")
        print(f"held-out combinations / seen: {result['unseen_vs_seen']}; "
              f"{result['wall_ms_per_sample']:.2f} ms/sample -> {Path(a.run) / 'shapes_eval.json'}")
    return 0


