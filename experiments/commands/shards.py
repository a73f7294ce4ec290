"""``ntm shards write``: webdataset shards from an image folder, a registered source, or an autoencoder's latents."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import pydantic
import tyro

from ntm.autoencoders import AutoencoderError
from ntm.data.base import DataError
from ntm.registry import did_you_mean
from ntm.experiments.core import UsageError, run_tyro


@dataclasses.dataclass(frozen=True)
class ShardsWrite:
    """Write webdataset tar shards from an image folder (flat, or one subfolder per class) or from a registered
    image source (--source shapes --count N): png, cls, txt caption and json annotation per sample. With
    --encode RUN, an autoencoder's latents instead (latent.npy per sample, the posterior mean at unit scale, with
    cls/txt/json), encoded once, and a latents.json sidecar written last beside the shards; a run reads them with
    data:latent-shards --data.urls ... and autoencoder:pretrained --autoencoder.path RUN."""

    out: str
    """Shard path pattern, e.g. 'shards/train-%06d.tar'."""
    folder: Path | None = None
    """Image folder; a .txt file beside an image is its caption (give this or --source)."""
    source: str | None = None
    """A registered image data source to write instead of a folder, e.g. 'shapes'."""
    count: int | None = None
    """Samples to write from --source (required with --split train; --split eval: default the whole split)."""
    split: Literal["train", "eval"] = "train"
    """Which examples of --source: its training stream (seeded by --seed) or its held-out split, in order."""
    source_options: tuple[str, ...] = ()
    """FIELD=VALUE settings of --source's config, e.g. image_size=64 train_size=50000 (values read as JSON
    where they parse, e.g. eval_split=unseen category_weights='{"counting": 1}')."""
    maxcount: int = 1000
    """Samples per shard."""
    seed: int = 0
    """Seed of the sample order across shards (a folder) or of the training stream (--source)."""
    sorted: bool = False
    """Keep the folder's sorted order instead of shuffling (folders only)."""
    encode: Path | None = None
    """An autoencoder run directory or its autoencoder.pt: write its latents instead of PNGs (a folder is read at
    the autoencoder's image size; images that do not fit it are refused before anything is written)."""


def _source_config(name: str, options: tuple[str, ...]) -> Any:
    """``--source NAME --source-options FIELD=VALUE ...`` -> the validated config of that data source."""
    from ntm.data import DATA_SOURCES

    fields: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise UsageError(f"--source-options takes FIELD=VALUE, got {option!r}")
        try:
            fields[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            fields[key.replace("-", "_")] = raw
    if name not in DATA_SOURCES.names():
        raise UsageError(f"--source: unknown data source {name!r}{did_you_mean(name, DATA_SOURCES.names())}; "
                         f"known: {', '.join(DATA_SOURCES.names())}")
    return DATA_SOURCES.get(name).config_cls.model_validate(fields)


def main(args: list[str]) -> int:
    from ntm.data.shards import write_shards, write_source_shards

    a = run_tyro(tyro.extras.subcommand_cli_from_dict, {"write": ShardsWrite}, prog="ntm shards", argv=args)
    if (a.folder is None) == (a.source is None):
        raise UsageError("give exactly one of --folder (an image folder) and --source (a registered data source)")
    if a.folder is not None:
        stray = [flag for flag, value in (("--count", a.count), ("--source-options", a.source_options or None),
                                          ("--split", None if a.split == "train" else a.split)) if value is not None]
        if stray:
            raise UsageError(f"{', '.join(stray)} go{'es' if len(stray) == 1 else ''} with --source, not --folder")
    elif a.sorted:
        raise UsageError("--sorted goes with --folder; a source's examples come in its own order")
    elif a.count is None and a.split == "train":
        raise UsageError("--source needs --count N with --split train (a training stream is endless)")
    try:
        if a.encode is not None:  # latents: every check (weights, image size) before the first file is written
            from ntm.autoencoders import LatentSource
            from ntm.autoencoders.files import load_autoencoder, read
            from ntm.data.latent_shards import folder_images, write_latent_shards

            file, state = read(a.encode)
            if a.folder is not None:
                images = folder_images(a.folder, tuple(state["image_shape"]), seed=None if a.sorted else a.seed)
                where = {"folder": str(a.folder), "split": "all", "order": "sorted" if a.sorted else f"seed {a.seed}"}
            else:
                images = _source_config(a.source, a.source_options).build()
                where = {"source": a.source, "options": list(a.source_options), "seed": a.seed}
            autoencoder, _ = load_autoencoder(file)
            if not bool(autoencoder.stats_fitted):
                raise AutoencoderError(f"{file} has no fitted latent statistics, so no run could match its latents; "
                                       "fit them first (ntm autoencoder train does at the end)")
            if images.spec.kind == "images":
                autoencoder.latent_shape(tuple(images.spec.shape))  # images that do not fit: one line, here
                autoencoder, _ = load_autoencoder(file, tuple(images.spec.shape))  # as a run builds it
            summary = write_latent_shards(LatentSource(images, autoencoder), a.out, a.count, a.maxcount,
                                          split="eval" if a.folder is not None else a.split, seed=a.seed,
                                          autoencoder_path=str(file), origin=where)
        elif a.folder is not None:
            summary = write_shards(a.folder, a.out, a.maxcount, seed=None if a.sorted else a.seed)
        else:
            summary = write_source_shards(_source_config(a.source, a.source_options), a.out, a.count, a.maxcount,
                                          split=a.split, seed=a.seed)
    except pydantic.ValidationError:
        raise
    except AutoencoderError:
        raise
    except ValueError as e:
        raise DataError(str(e)) from None
    classes = f"{len(summary.class_names)} classes" if summary.class_names else "unconditional"
    origin = f" from {a.source} ({a.split})" if a.source else ""
    annotations = f", {summary.num_annotations} annotations" if summary.num_annotations else ""
    what = "samples" if a.encode is None else \
        f"latents {'x'.join(map(str, summary.latent_shape))} of autoencoder {summary.autoencoder}"
    print(f"wrote {summary.num_samples} {what}{origin} ({classes}, {summary.num_captions} captions{annotations}) "
          f"to {len(summary.shards)} shards: {summary.shards[0]} .. {summary.shards[-1]}")
    return 0


