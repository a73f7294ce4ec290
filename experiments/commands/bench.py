"""``ntm bench``: the benchmark suites (toy, digits, shapes, latent, paper) and the latency, loader and
checkpoint benches."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import tyro

from ntm.experiments.core import UsageError, run_tyro


@dataclasses.dataclass(frozen=True)
class BenchArgs:
    suite: tyro.conf.Positional[Literal["toy", "digits", "shapes", "latent", "paper", "latency", "loader",
                                         "checkpoint"]]
    """toy (2-D mixture, ~10 min on CPU), digits (~45-50 min on 2 CPU cores), shapes (text-to-image on procedural
    captioned shapes: NTM@4 vs Gaussian@4, flow matching Euler@4/16/64 and a deep-shallow AR flow of the same size,
    scored by the shapes-eval judge), latent (pixel vs latent NTM@4 on shapes at 32x32, same training wall time: domain
    FID, judge, ms/sample with decoding, training examples/s; trains the shapes-ae autoencoder first), paper (GPU, imagenet-paper family) or latency (time to one image and batched
    throughput: NTM@4 + learned denoiser vs a deep-shallow AR flow of the same size and flow matching, random
    weights, ~3 min on CPU) or loader (data loader examples/s per num_workers vs the training step: data-bound or
    compute-bound; its own flags: ntm bench loader --help) or checkpoint (bytes written and host memory added per
    rank while saving a training checkpoint, torchrun on CPU ranks; its own flags: ntm bench checkpoint --help)."""
    out: Path = Path("runs/bench")
    """Output directory (results.json, results.md, plots, figures, runs/)."""
    train_steps: int | None = None
    """Training steps per model (default: the suite's budget)."""
    finetune_steps: int | None = None
    """Steps of the NTMs finetuned from the flow-matching teacher (default: train-steps // 2)."""
    distill_steps: int | None = None
    """Steps of each distilled learned denoiser (digits; default: train-steps // 2)."""
    teacher_steps: int | None = None
    """Steps of the flow-matching model, the finetuning teacher (default: toy train-steps, digits 4 x train-steps)."""
    num_samples: int | None = None
    """Samples per evaluation point (default: the suite's)."""
    seed: int = 0
    """Training seed shared by every model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train and sample."""
    tiny: bool = False
    """Shrink every network to a minimum (smoke tests)."""
    data_urls: str | None = None
    """Training shards for the paper suite (webdataset brace pattern)."""
    eval_urls: str | None = None
    """Held-out shards for the paper suite."""
    inception_weights: Path | None = None
    """Local Inception weights file for the paper suite's FID (nothing is downloaded)."""
    batch: int = 64
    """Batch size of the latency suite's throughput measurement."""


def main(args: list[str]) -> int:
    from ntm.experiments.bench import SUITES, run_suite

    if args[:1] == ["loader"]:  # its own flags (experiments/loader_bench.py)
        from ntm.experiments.loader_bench import loader_command

        return loader_command(args[1:])
    if args[:1] == ["checkpoint"]:  # its own flags (experiments/checkpoint_bench.py)
        from ntm.experiments.checkpoint_bench import checkpoint_command

        return checkpoint_command(args[1:])
    a = run_tyro(tyro.cli, BenchArgs, prog="ntm bench", argv=args)
    if a.suite == "loader":
        from ntm.experiments.loader_bench import loader_command

        rest = list(args)
        rest.remove("loader")
        return loader_command(rest)
    if a.suite == "checkpoint":
        from ntm.experiments.checkpoint_bench import checkpoint_command

        rest = list(args)
        rest.remove("checkpoint")
        return checkpoint_command(rest)
    if a.suite == "latency":
        return _latency(a)
    kwargs = {"seed": a.seed, "tiny": a.tiny}
    if a.train_steps is not None:
        kwargs["train_steps"] = a.train_steps
    for key in ("num_samples", "finetune_steps", "distill_steps", "teacher_steps"):
        if getattr(a, key) is not None:
            kwargs[key] = getattr(a, key)
    started = time.monotonic()
    overrides = {k: v for k, v in (("urls", a.data_urls), ("eval_urls", a.eval_urls)) if v is not None}
    rows = run_suite(SUITES[a.suite](**kwargs), a.out, device=a.device, data_overrides=overrides,
                     inception_weights=a.inception_weights)
    print((a.out / "results.md").read_text())
    print(f"bench {a.suite}: {len(rows)} rows in {time.monotonic() - started:.0f}s -> {a.out}")
    return 0


def _latency(a: BenchArgs) -> int:
    from ntm.experiments.latency import run_latency

    unused = [f"--{k.replace('_', '-')}" for k in ("train_steps", "finetune_steps", "distill_steps", "teacher_steps",
                                                  "num_samples", "data_urls", "eval_urls", "inception_weights")
              if getattr(a, k) is not None]
    if unused:
        raise UsageError(f"the latency suite trains nothing and scores no samples: drop {', '.join(unused)}")
    if a.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {a.batch}")
    from ntm.train.distributed import resolve_device

    run_latency(a.out, batch=a.batch, tiny=a.tiny, device=str(resolve_device(a.device)), seed=a.seed,
                repeats=1 if a.tiny else 5)
    print((a.out / "latency.md").read_text())
    return 0
