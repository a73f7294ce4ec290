"""``ntm bench BENCH``: the suites trained side by side (toy, digits, shapes, latent, paper) and the benches of one
cost each (latency, loader, checkpoint, gpu, scaling, oracle-gap), as tyro subcommands; ``ntm bench BENCH --help``
lists each one's flags."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import tyro

from ntm.experiments.bench import SUITES, run_suite
from ntm.experiments.bench import checkpoint, gpu, loader, oracle_gap, scaling
from ntm.experiments.core import UsageError, run_tyro


@dataclasses.dataclass(frozen=True)
class SuiteArgs:
    suite: ClassVar[str]
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


SUITE_HELP = {
    "toy": "Baselines vs NTM on the 2-D mixture, one table (~10 min on CPU).",
    "digits": "Baselines vs NTM on scikit-learn's digits (~45-50 min on 2 CPU cores).",
    "shapes": "Text-to-image on procedural captioned shapes: NTM@4 vs Gaussian@4, flow matching Euler@4/16/64 and a "
              "deep-shallow AR flow of the same size, scored by the shapes-eval judge.",
    "latent": "Pixel vs latent NTM@4 on shapes at 32x32, same training wall time: domain FID, judge, ms/sample with "
              "decoding, training examples/s (trains the shapes-ae autoencoder first).",
    "paper": "The imagenet-paper family on a GPU, from --data-urls shards.",
}


def _suite_args(name: str) -> type[SuiteArgs]:
    cls = type(f"{name.title()}SuiteArgs", (SuiteArgs,), {"__doc__": SUITE_HELP[name], "suite": name,
                                                           "__module__": __name__})
    return dataclasses.dataclass(frozen=True)(cls)


@dataclasses.dataclass(frozen=True)
class LatencyArgs:
    """Time to one image and batched throughput: NTM@4 + learned denoiser vs a deep-shallow AR flow of the same size
    and flow matching, random weights (~3 min on CPU)."""

    out: Path = Path("runs/bench-latency")
    """Output directory (latency.json, latency.md)."""
    batch: int = 64
    """Batch size of the throughput measurement."""
    seed: int = 0
    """Seed of the random weights."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to sample."""
    tiny: bool = False
    """Shrink every network to a minimum (smoke tests)."""


BENCHES: dict[str, type] = {
    **{name: _suite_args(name) for name in SUITES},
    "latency": LatencyArgs, "loader": loader.LoaderArgs, "checkpoint": checkpoint.CheckpointBenchArgs,
    "gpu": gpu.GpuArgs, "scaling": scaling.ScalingArgs, "oracle-gap": oracle_gap.OracleGapArgs,
}


def main(args: list[str]) -> int:
    a = run_tyro(tyro.extras.subcommand_cli_from_dict, BENCHES, prog="ntm bench", argv=args)
    if isinstance(a, SuiteArgs):
        return _suite(a)
    if isinstance(a, LatencyArgs):
        return _latency(a)
    if isinstance(a, loader.LoaderArgs):
        print(loader.loader_table(loader.run_loader_bench(a)), end="")
        return 0
    if isinstance(a, checkpoint.CheckpointBenchArgs):
        return checkpoint.run_command(a)
    if isinstance(a, gpu.GpuArgs):
        return gpu.run(a)
    if isinstance(a, scaling.ScalingArgs):
        return scaling.run(a)
    oracle_gap.run(a)
    return 0


def _suite(a: SuiteArgs) -> int:
    kwargs: dict[str, Any] = {"seed": a.seed, "tiny": a.tiny}
    for key in ("train_steps", "num_samples", "finetune_steps", "distill_steps", "teacher_steps"):
        if getattr(a, key) is not None:
            kwargs[key] = getattr(a, key)
    started = time.monotonic()
    overrides = {k: v for k, v in (("urls", a.data_urls), ("eval_urls", a.eval_urls)) if v is not None}
    rows = run_suite(SUITES[a.suite](**kwargs), a.out, device=a.device, data_overrides=overrides,
                     inception_weights=a.inception_weights)
    print((a.out / "results.md").read_text())
    print(f"bench {a.suite}: {len(rows)} rows in {time.monotonic() - started:.0f}s -> {a.out}")
    return 0


def _latency(a: LatencyArgs) -> int:
    from ntm.experiments.bench.latency import run_latency
    from ntm.train.distributed import resolve_device

    if a.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {a.batch}")
    run_latency(a.out, batch=a.batch, tiny=a.tiny, device=str(resolve_device(a.device)), seed=a.seed,
                repeats=1 if a.tiny else 5)
    print((a.out / "latency.md").read_text())
    return 0
