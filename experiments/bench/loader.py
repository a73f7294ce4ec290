"""``ntm bench loader``: is training data-bound or compute-bound? Loader throughput per ``num_workers`` vs the step.

    ntm bench loader --out runs/bench-loader                           # shapes shards written on the fly, offline
    ntm bench loader --out runs/bl --preset imagenet-paper --autoencoder-path /shared/runs/imagenet-ae \\
        --latent-urls '/shared/latents/in256/train-{000000..001281}.tar' --workers 0 4 8 16 --batch 128 --grad-accum 4

The data side is the stream the training loop iterates (``experiments.build.data_for``: the preset's source, its
latents under the run's autoencoder when it has one), read with each ``--workers`` setting of the source's
``num_workers`` for ``--batches`` batches of ``--batch`` (rank 0 of 1, the preset's seed). Its rate is the
examples per second after the first batch (``startup_s``: the time to the first batch, DataLoader workers
included). ``--latent-urls`` reads cached latents (``data:latent-shards``) instead of a latent preset's pixel
shards, which are otherwise encoded on the fly. The compute side is ``--steps`` training steps of the preset's
model at the same batch on one device, in ``--grad-accum`` micro-batches (:func:`ntm.train.step.train_step`, the loop's own step:
conditioner, forward through the loss, backward, clipping, AdamW, EMA; after two warm-up steps), fed one batch
from the stream already in memory.

A setting is **data-bound** when the loader's rate is below the step's: the GPU (or CPU) would wait for data.
With ``num_workers = 0`` loading and computing take turns in one process, so the loop runs at about
``1 / (1 / loader + 1 / step)``; with workers they overlap and it runs at about ``min(loader, step)``
(``expected_examples_per_s``), provided the workers have cores of their own (on a small CPU machine they take
them from the step).

Without ``--preset``, ``batch x batches`` procedural ``shapes`` scenes (16x16 RGB with captions) are written as
8 webdataset shards into ``DIR/shards`` (``ntm shards write --source shapes``'s machinery; reused when present)
and read by ``data:webdataset`` under the ``shapes-t2i-ntm`` model, so the bench runs offline. Reading
``batch x batches`` examples is then exactly one epoch, so every setting must read the same examples:
``examples_digest`` (a hash of the sorted per-example hashes of ``x``) is equal across settings, which checks
the per-worker shard split. Outputs: ``DIR/loader.json`` and ``DIR/loader.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Literal

import torch

from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS

SHARDS = 8
"""Shards the default data is written to (so that up to 8 workers each have one)."""


@dataclasses.dataclass(frozen=True)
class LoaderArgs:
    """Loader throughput per num_workers setting vs the training step's throughput at the same batch: data-bound
    or compute-bound (see experiments/bench/loader.py)."""

    out: Path = Path("runs/bench-loader")
    """Output directory (loader.json, loader.md; shards/ for the default data)."""
    preset: str | None = None
    """The preset whose data and model are measured (default: shapes shards written into OUT/shards, read under
    the shapes-t2i-ntm model)."""
    data_urls: str | None = None
    """Training shards overriding the preset's data.urls (webdataset brace pattern)."""
    workers: tuple[int, ...] = (0, 1, 2, 4)
    """num_workers settings of the data source to measure."""
    batch: int = 64
    """Examples per batch (the per-GPU batch of the run you are sizing)."""
    batches: int = 20
    """Batches read per setting."""
    latent_urls: str | None = None
    """Cached latent shards (ntm shards write --encode) to read instead of a latent preset's pixel shards
    (data:latent-shards; the autoencoder must be the one that wrote them)."""
    autoencoder_path: Path | None = None
    """The autoencoder of a latent preset (its run directory or autoencoder.pt), overriding autoencoder.path."""
    steps: int = 5
    """Timed training steps (after two warm-up steps)."""
    grad_accum: int = 1
    """Micro-batches per training step (the batch must be divisible by it): a per-GPU batch that does not fit
    the device in one piece, as train.grad_accum splits it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the training step runs."""
    tiny: bool = False
    """Shrink the model to a minimum (smoke tests)."""
    seed: int = 0
    """Seed of the data stream and the model."""


def default_experiment(out: Path, batch: int, batches: int, seed: int) -> tuple[Experiment, int]:
    """``shapes-t2i-ntm`` on ``batch x batches`` shapes scenes in 8 webdataset shards under ``out/shards``;
    returns the experiment and the number of examples written (one epoch)."""
    from ntm.data import WebDatasetConfig
    from ntm.data.shapes import ShapesConfig
    from ntm.data.shards import write_source_shards

    base = PRESETS["shapes-t2i-ntm"]
    count = batch * batches
    folder = out / "shards"
    manifest = folder / "manifest.json"
    want = {"source": "shapes", "image_size": base.data.image_size, "count": count, "shards": SHARDS, "seed": seed}
    if not (manifest.is_file() and json.loads(manifest.read_text()) == want):
        for old in folder.glob("train-*.tar"):
            old.unlink()
        summary = write_source_shards(ShapesConfig(image_size=base.data.image_size), str(folder / "train-%06d.tar"),
                                      count, maxcount=math.ceil(count / SHARDS), seed=seed)
        want["shards"] = len(summary.shards)
        manifest.write_text(json.dumps(want) + "\n")
    shards = json.loads(manifest.read_text())["shards"]
    urls = str(folder / f"train-{{000000..{shards - 1:06d}}}.tar")
    data = WebDatasetConfig(urls=urls, image_size=base.data.image_size, channels=3, shuffle_buffer=256)
    return base.replace(name="bench-loader", data=data), count


def examples_digest(hashes: list[str]) -> str:
    """One hash of a multiset of per-example hashes (order-free)."""
    return hashlib.blake2b("".join(sorted(hashes)).encode(), digest_size=12).hexdigest()


def _example_hashes(x: torch.Tensor) -> list[str]:
    flat = x.detach().cpu().contiguous().reshape(x.shape[0], -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat]


def measure_loader(exp: Experiment, *, batch: int, batches: int, seed: int) -> dict:
    """Read ``batches`` batches of ``exp``'s training stream; rates, start-up time and the examples' digest."""
    from ntm.experiments.build import data_for

    data = data_for(exp)
    stream = data.train_batches(batch, seed=seed)
    hashes: list[str] = []
    started = time.perf_counter()
    first = None
    for _ in range(batches):
        b = next(stream)
        if first is None:
            first = time.perf_counter()
        hashes += _example_hashes(b.x)
    end = time.perf_counter()
    stream.close()
    steady = (batches - 1) * batch / (end - first) if batches > 1 and end > first else math.nan
    return {"examples": len(hashes), "startup_s": first - started, "total_s": end - started,
            "examples_per_s": steady, "examples_per_s_with_startup": len(hashes) / (end - started),
            "distinct_examples": len(set(hashes)), "examples_digest": examples_digest(hashes),
            "skipped": int(getattr(getattr(data, "inner", data), "skipped", 0))}


def measure_step(exp: Experiment, *, batch: int, steps: int, device: torch.device, grad_accum: int = 1) -> dict:
    """Examples per second of ``steps`` training steps of ``exp``'s model at ``batch`` in ``grad_accum``
    micro-batches (after 2 warm-up steps)."""
    from ntm.experiments.build import build_model, data_for, layout_for
    from ntm.experiments.core import UsageError
    from ntm.experiments.bench.scaling import bench_state
    from ntm.train.step import train_step

    data = data_for(exp.replace(data=_with_workers(exp, 0).data))
    one = next(iter(data.train_batches(batch, seed=exp.train.seed)))
    torch.manual_seed(exp.train.seed)
    model = build_model(exp, data)
    state = bench_state(exp, model, device=device, layout=layout_for(exp, data), grad_accum=grad_accum)
    try:
        for _ in range(2):
            train_step(state, one)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            loss = train_step(state, one).loss
        wall = time.perf_counter() - started
    except torch.cuda.OutOfMemoryError:
        raise UsageError(f"--batch {batch}: the training step does not fit on {device} in {grad_accum} "
                         "micro-batch(es); raise --grad-accum (docs/scaling.md, memory per GPU)") from None
    return {"steps": steps, "grad_accum": grad_accum, "wall_s": wall, "examples_per_s": steps * batch / wall,
            "loss": loss, "params": sum(p.numel() for p in model.parameters())}


def _with_workers(exp: Experiment, workers: int) -> Experiment:
    if "num_workers" not in type(exp.data).model_fields:
        return exp
    return exp.replace(data=exp.data.replace(num_workers=workers))


def verdict(loader: float, step: float) -> str:
    return "data-bound" if loader < step else "compute-bound"


def run_loader_bench(a: LoaderArgs) -> dict:
    """The whole bench (see the module docstring); writes ``loader.json`` and ``loader.md`` under ``a.out``."""
    from ntm.experiments.core import UsageError
    from ntm.experiments.bench.scaling import tiny_experiment
    from ntm.data import DATA_SOURCES
    from ntm.train.distributed import resolve_device

    for name, value in (("--batch", a.batch), ("--batches", a.batches), ("--steps", a.steps),
                        ("--grad-accum", a.grad_accum)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if a.batch % a.grad_accum:
        raise UsageError(f"--batch {a.batch} is not divisible by --grad-accum {a.grad_accum}")
    if not a.workers or min(a.workers) < 0:
        raise UsageError(f"--workers takes num_workers settings >= 0, got {' '.join(map(str, a.workers)) or 'none'}")
    epoch = None
    if a.preset is None:
        stray = [flag for flag, value in (("--data-urls", a.data_urls), ("--latent-urls", a.latent_urls),
                                          ("--autoencoder-path", a.autoencoder_path)) if value is not None]
        if stray:
            raise UsageError(f"{', '.join(stray)} go{'es' if len(stray) == 1 else ''} with --preset (the default data "
                             "is written into OUT/shards)")
        a.out.mkdir(parents=True, exist_ok=True)
        exp, epoch = default_experiment(a.out, a.batch, a.batches, a.seed)
    elif a.preset not in PRESETS:
        from ntm.registry import did_you_mean

        raise UsageError(f"--preset: unknown preset {a.preset!r}{did_you_mean(a.preset, list(PRESETS))}")
    else:
        exp = PRESETS[a.preset]
        if a.data_urls is not None:
            if "urls" not in type(exp.data).model_fields:
                raise UsageError(f"--data-urls: {a.preset} reads data:{DATA_SOURCES.name_of(exp.data)}, which has no "
                                 "urls")
            exp = exp.replace(data=exp.data.replace(urls=a.data_urls))
        if a.autoencoder_path is not None:
            if exp.autoencoder.is_identity:
                raise UsageError(f"--autoencoder-path: {a.preset} trains on pixels (no autoencoder)")
            exp = exp.replace(autoencoder=exp.autoencoder.replace(path=str(a.autoencoder_path)))
        if a.latent_urls is not None:
            if a.data_urls is not None:
                raise UsageError("give one of --data-urls (pixel shards) and --latent-urls (cached latents)")
            if exp.autoencoder.is_identity:
                raise UsageError(f"--latent-urls: {a.preset} trains on pixels (no autoencoder)")
            from ntm.data.latent_shards import LatentShardsConfig

            latents = LatentShardsConfig(urls=a.latent_urls, num_workers=getattr(exp.data, "num_workers", 0),
                                         num_classes=getattr(exp.data, "num_classes", None))
            exp = exp.replace(data=latents)
    if a.workers != (0,) and "num_workers" not in type(exp.data).model_fields:
        raise UsageError(f"--workers: data:{DATA_SOURCES.name_of(exp.data)} has no num_workers (it reads in the "
                         "training process); pass --workers 0")
    exp = exp.replace(train=exp.train.replace(seed=a.seed))
    if a.tiny:
        exp = tiny_experiment(exp)
    device = resolve_device(a.device)
    a.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for workers in a.workers:
        row = {"num_workers": workers, **measure_loader(_with_workers(exp, workers), batch=a.batch,
                                                        batches=a.batches, seed=a.seed)}
        print(f"num_workers {workers}: {row['examples_per_s']:.1f} examples/s after {row['startup_s']:.2f} s "
              "to the first batch", flush=True)
        rows.append(row)
    step = measure_step(exp, batch=a.batch, steps=a.steps, device=device, grad_accum=a.grad_accum)
    print(f"training step: {step['examples_per_s']:.1f} examples/s at batch {a.batch} ({a.grad_accum} "
          f"micro-batch{'es' if a.grad_accum > 1 else ''}) on {device}", flush=True)
    for row in rows:
        loader, compute = row["examples_per_s"], step["examples_per_s"]
        row["verdict"] = verdict(loader, compute)
        row["expected_examples_per_s"] = (1 / (1 / loader + 1 / compute)) if row["num_workers"] == 0 \
            else min(loader, compute)
    result = {"preset": a.preset or "default (shapes shards, shapes-t2i-ntm)",
              "data_source": DATA_SOURCES.name_of(exp.data), "data": exp.data.model_dump(mode="json"),
              "autoencoder": None if exp.autoencoder.is_identity else exp.autoencoder.model_dump(mode="json"),
              "batch": a.batch, "batches": a.batches,
              "epoch_examples": epoch, "whole_epochs": epoch is not None and (a.batch * a.batches) % epoch == 0,
              "device": str(device), "threads": torch.get_num_threads(), "cpu_count": _cpus(), "tiny": a.tiny,
              "step": step, "rows": rows}
    (a.out / "loader.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "loader.md").write_text(loader_table(result))
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_table(result: dict) -> str:
    step = result["step"]
    head = (f"Loader vs training step: {result['preset']} (data:{result['data_source']}"
            f"{', encoded on the fly' if result['autoencoder'] and result['data_source'] != 'latent-shards' else ''}), "
            f"batch {result['batch']}, {result['batches']} batches per "
            f"setting, step on {result['device']} ({step['examples_per_s']:.1f} examples/s), "
            f"{result['cpu_count']} CPU cores.\n\n"
            "| num_workers | loader (examples/s) | first batch (s) | step (examples/s) | expected loop (examples/s) "
            "| verdict | examples read | digest |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['num_workers']} | {r['examples_per_s']:.1f} | {r['startup_s']:.2f} | {step['examples_per_s']:.1f} "
        f"| {r['expected_examples_per_s']:.1f} | {r['verdict']} | {r['examples']} ({r['distinct_examples']} distinct) "
        f"| `{r['examples_digest']}` |\n" for r in result["rows"])
