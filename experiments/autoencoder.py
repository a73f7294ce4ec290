"""``ntm autoencoder train PRESET``: an autoencoder trained as a run like every other.

    ntm autoencoder train shapes-ae                      # ~10 min on 2 CPU cores
    ntm autoencoder train digits-ae --autoencoder.latent-channels 8
    ntm autoencoder train shapes-ae --resume             # continue after a crash
    ntm train shapes-latent-ntm                          # an NTM on its latents (autoencoder:pretrained)

The run directory holds what every run holds (config.json, checkpoints/, tensorboard events, metrics.jsonl,
samples/) and, once training ends, ``autoencoder.pt`` (the EMA weights with the latent shift and scale fitted on
the training data: what runs on latents and ``ntm shards write --encode`` read), ``final.json`` (held-out
reconstruction PSNR, the KL term, the encode-decode cycle PSNR, the latent statistics) and
``samples/reconstructions.png`` (held-out images, each row above its reconstruction).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pydantic
import torch
from torch import Tensor, nn

from ntm.atomic import atomic_write_text
from ntm.autoencoders import AUTOENCODERS, Autoencoder, AutoencoderError, ConvAutoencoderConfig, save_autoencoder
from ntm.autoencoders.files import FILE_NAME
from ntm.conditioning import NoConditioner
from ntm.data import DATA_SOURCES, DigitsConfig
from ntm.data.base import DataError, DataSource
from ntm.data.shapes import ShapesConfig
from ntm.data.streaming import WebDatasetConfig
from ntm.train.config import TrainConfig
from ntm.train.loop import TrainJob, train
from ntm.viz import image_grid, save_png
from ntm.registry import ComponentConfig


class AutoencoderEvalConfig(ComponentConfig):
    num_examples: int = pydantic.Field(1000, ge=1)
    """Held-out images scored for reconstruction PSNR and the KL term."""
    stats_examples: int = pydantic.Field(2048, ge=1)
    """Training images the latent shift and scale are fitted on."""
    batch_size: int = pydantic.Field(256, ge=1)
    """Evaluation batch size."""
    grid_columns: int = pydantic.Field(8, ge=1)
    """Images per row of the reconstruction figure."""


class AutoencoderExperiment(ComponentConfig):
    """An autoencoder run: data, the autoencoder to train, optimisation."""

    name: str = "autoencoder"
    """Name of the run (the default run directory is runs/<name>)."""
    run_dir: str | None = None
    """Where checkpoints, logs, autoencoder.pt and figures go (None: runs/<name>)."""
    data: DATA_SOURCES.field() = DigitsConfig()
    """Image source (digits, shapes, an image folder, webdataset shards)."""
    autoencoder: AUTOENCODERS.field() = ConvAutoencoderConfig()
    """The autoencoder to train (a variant that trains from scratch, e.g. conv)."""
    train: TrainConfig = TrainConfig()
    """Optimisation and run settings (the same loop as every run)."""
    eval: AutoencoderEvalConfig = AutoencoderEvalConfig()
    """Evaluation settings."""

    @pydantic.model_validator(mode="after")
    def _trainable(self) -> "AutoencoderExperiment":
        if not self.autoencoder.trainable():
            raise ValueError(f"autoencoder:{AUTOENCODERS.name_of(self.autoencoder)} does not train from scratch; "
                             "use autoencoder:conv")
        return self

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"


# digits: 8x8 -> 2 x 4x4 (x2: 32 latent dims for 64 pixels; the CPU demo of the workflow): 80 s on 2 idle CPU cores,
# held-out PSNR 30.97 dB (2026-11-29)
_DIGITS_AE = AutoencoderExperiment(
    name="digits-ae", data=DigitsConfig(),
    autoencoder=ConvAutoencoderConfig(downsample=2, latent_channels=2, width=32),
    train=TrainConfig(steps=1500, batch_size=128, lr=2e-3, warmup_steps=100, sample_every=500,
                      checkpoint_every=500, ema_decay=0.999),
    eval=AutoencoderEvalConfig(num_examples=360),
)
# shapes: 32x32 RGB -> 4 x 8x8 (x4 downsampling, 256 latent dims for 3,072 pixels): 358 s on 2 idle CPU cores,
# held-out PSNR 38.31 dB (2026-11-29, `ntm bench latent`)
_SHAPES_AE = AutoencoderExperiment(
    name="shapes-ae", data=ShapesConfig(image_size=32),
    autoencoder=ConvAutoencoderConfig(downsample=4, latent_channels=4, width=32),
    train=TrainConfig(steps=800, batch_size=64, lr=2e-3, warmup_steps=50, sample_every=400,
                      checkpoint_every=200, ema_decay=0.99),
)
# GPU-sized, for imagenet-paper: 256x256 RGB -> 32 x 32x32 (x8, 32 channels, like the paper's FAE latents)
_IMAGENET_AE = AutoencoderExperiment(
    name="imagenet-ae",
    data=WebDatasetConfig(urls="data/imagenet256/train-{000000..001281}.tar", image_size=256, channels=3,
                          num_workers=8),
    autoencoder=ConvAutoencoderConfig(downsample=8, latent_channels=32, width=128, blocks=2),
    train=TrainConfig(steps=200_000, batch_size=256, lr=2e-4, betas=(0.9, 0.95), warmup_steps=2000,
                      sample_every=5000, checkpoint_every=2000, precision="bf16", ema_decay=0.9999),
    eval=AutoencoderEvalConfig(num_examples=2000, stats_examples=8192, batch_size=64),
)

AE_PRESETS: dict[str, AutoencoderExperiment] = {"digits-ae": _DIGITS_AE, "shapes-ae": _SHAPES_AE,
                                               "imagenet-ae": _IMAGENET_AE}


class WholeImages:
    """The loop's token layout for an autoencoder: the images pass as they are."""

    def to_tokens(self, x: Tensor) -> Tensor:
        return x

    def from_tokens(self, x: Tensor) -> Tensor:
        return x


def _display(x: Tensor) -> Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def _heldout(data: DataSource, n: int, batch_size: int) -> Tensor:
    try:
        batches = [b.x for b in data.eval_batches(batch_size, max_examples=n)]
    except DataError:
        batches = []
    if not batches:  # no held-out split: a training batch far from the start of the stream
        return next(data.train_batches(min(n, 256), seed=10_000)).x
    return torch.cat(batches)


def reconstruction_figure(model: Autoencoder, images: Tensor, columns: int) -> Tensor:
    """Rows of ``columns`` images, each row of originals above its row of reconstructions."""
    images = images[: 4 * columns]
    with torch.no_grad():
        recon = model.decode(model.encode(images))
    rows = []
    for i in range(0, images.shape[0], columns):
        rows += [_display(images[i:i + columns]), _display(recon[i:i + columns])]
    upscale = max(1, 64 // images.shape[-1])
    return image_grid(torch.cat(rows), nrow=columns, upscale=upscale)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of images in ``[-1, 1]`` (as in display space ``[0, 1]``: peak 1)."""
    mse = ((_display(a) - _display(b)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate(model: Autoencoder, images: Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Held-out reconstruction PSNR (mean over images, and of the pooled MSE), the KL term per latent element
    (variational autoencoders), and the cycle PSNR: ``decode(encode(decode(encode(x))))`` vs
    ``decode(encode(x))`` (a decoded image re-encodes stably)."""
    per_image, cycle, mse, kl = [], [], [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        recon = model.decode(model.encode(x)).clamp(-1, 1)
        again = model.decode(model.encode(recon)).clamp(-1, 1)
        per_image.append(psnr(recon, x))
        cycle.append(psnr(again, recon))
        mse.append(((_display(recon) - _display(x)) ** 2).flatten(1).mean(1))
        posterior = getattr(model, "posterior", None)
        if posterior is not None:
            mean, logvar = posterior(x)
            kl.append((0.5 * (mean ** 2 + logvar.exp() - 1 - logvar)).flatten(1).mean(1))
    pooled = torch.cat(mse).mean()
    out = {"psnr": torch.cat(per_image).mean().item(), "psnr_pooled": (10 * torch.log10(1 / pooled)).item(),
           "cycle_psnr": torch.cat(cycle).mean().item(), "examples": int(images.shape[0])}
    if kl:
        out["kl_per_latent_dim"] = torch.cat(kl).mean().item()
    return out


def image_shape_of(data: DataSource) -> tuple[int, int, int]:
    if data.spec.kind != "images" or len(data.spec.shape) != 3 or data.spec.encoded_by is not None:
        raise AutoencoderError(f"an autoencoder trains on images; the data source yields {data.spec.kind} of shape "
                               f"{data.spec.shape}")
    return tuple(data.spec.shape)  # type: ignore[return-value]


def train_autoencoder(exp: AutoencoderExperiment, *, resume: bool = False, quiet: bool = False) -> dict[str, Any] | None:
    """Train ``exp``'s autoencoder, fit its latent statistics, write autoencoder.pt, final.json and the figure.

    Returns the final metrics (rank 0; ``None`` on other ranks)."""
    data = exp.data.build()
    shape = image_shape_of(data)
    exp.autoencoder.build(shape)  # images of the wrong size, weights that do not load: before anything is written
    run_dir = Path(exp.resolved_run_dir)
    images = _heldout(data, exp.eval.num_examples, exp.eval.batch_size)

    def preview(model: nn.Module, step: int) -> Tensor:
        return reconstruction_figure(model, images, exp.eval.grid_columns)

    job = TrainJob(
        build_model=lambda: exp.autoencoder.build(shape),
        objective=None,  # the autoencoder's forward computes its own objective
        data=data,
        layout=WholeImages(),  # type: ignore[arg-type]
        conditioner=NoConditioner(),
        train=exp.train,
        run_dir=run_dir,
        config=exp.model_dump(mode="json"),
        upgrade_config=lambda saved: AutoencoderExperiment.model_validate(saved).model_dump(mode="json"),
        resume=resume,
        preview=preview,
    )
    result = train(job)
    if result.ema_model is None:
        return None
    model: Autoencoder = result.ema_model.cpu().eval()
    t0 = time.monotonic()
    stats = model.fit_latent_stats((b.x for b in data.train_batches(min(exp.eval.stats_examples, 256),
                                                                    seed=exp.train.seed + 1)),
                                   max_examples=exp.eval.stats_examples)
    metrics = evaluate(model, images, exp.eval.batch_size)
    latent = model.latent_shape(shape)
    final = {
        **metrics,
        "image_shape": list(shape), "latent_shape": list(latent),
        "compression": math.prod(shape) / math.prod(latent),
        "latent_stats": {"shift": stats["shift"], "scale": stats["scale"], "examples": stats["examples"]},
        "fingerprint": model.fingerprint(),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": result.steps, "wall_seconds": result.wall_seconds,
        "examples_per_second": result.examples_per_second, "eval_seconds": time.monotonic() - t0,
    }
    save_autoencoder(run_dir / FILE_NAME, model, exp.autoencoder, shape, extra={"final": final})
    save_png(reconstruction_figure(model, images, exp.eval.grid_columns), run_dir / "samples" / "reconstructions.png")
    atomic_write_text(run_dir / "final.json", json.dumps(final, indent=2) + "\n")
    if not quiet:
        print(f"trained {exp.name}: {result.steps} steps in {result.wall_seconds:.1f}s "
              f"({result.examples_per_second:.0f} examples/s)")
        kl = f", KL {final['kl_per_latent_dim']:.3f} nats per latent dim" if "kl_per_latent_dim" in final else ""
        print(f"held-out reconstruction PSNR {final['psnr']:.2f} dB over {final['examples']} images "
              f"(cycle {final['cycle_psnr']:.2f} dB){kl}; latents {tuple(latent)} = "
              f"{final['compression']:.1f}x fewer numbers than {tuple(shape)}")
        print(f"autoencoder: {run_dir / FILE_NAME} (fingerprint {final['fingerprint']}); "
              f"reconstructions: {run_dir / 'samples' / 'reconstructions.png'}")
    return final


__all__ = ["AE_PRESETS", "AutoencoderExperiment", "evaluate", "train_autoencoder"]
