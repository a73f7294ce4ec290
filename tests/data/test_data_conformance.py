"""Conformance suite: every registered data source, by name, meets the DataSource contract.

The checks live in :mod:`ntm.testing` (plugin authors run the same ones).
A name runs its default config unless ``FIXTURES`` says how to build a small
offline instance (sources that read files get a few tiny images written to
``tmp_path``) and which stream rules it follows. A new source is covered the
moment it registers; one whose default config cannot be built offline must
add an entry here.
"""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
import torch

from ntm import testing
from ntm.data import DATA_SOURCES, Batch, DataSource, DataSpec, ImageFolderConfig, WebDatasetConfig
from ntm.data.shards import write_shards


def image_folder_source(tmp_path, image_folder):
    root = image_folder(tmp_path / "images", 12, classes=("cat", "dog"), size=(6, 5))
    return ImageFolderConfig(path=str(root), image_size=4, eval_fraction=0.25), {}


def webdataset_source(tmp_path, image_folder):
    """4 shards of 5 images; shards are split between ranks and a resumed stream is reshuffled (see ntm.data.streaming)."""
    folder = image_folder(tmp_path / "images", 20, classes=("a", "b"), size=(6, 5))
    write_shards(folder, str(tmp_path / "shards" / "s-%04d.tar"), maxcount=5)
    urls = str(tmp_path / "shards" / "s-{0000..0003}.tar")
    config = WebDatasetConfig(urls=urls, eval_urls=urls, image_size=4, num_classes=2, shuffle_buffer=8)
    return config, {"resume": "reseed", "ranks": "differ"}


def latent_shards_source(tmp_path, image_folder):
    """The latents of 20 images (4 shards of 5) under a tiny x2 autoencoder: unit-scale, shown through it (its
    file, as the sidecar records it); split and reseeded like webdataset."""
    from ntm.autoencoders import ConvAutoencoderConfig, LatentSource, save_autoencoder
    from ntm.data.latent_shards import LatentShardsConfig, write_latent_shards

    folder = image_folder(tmp_path / "images", 20, classes=("a", "b"), size=(6, 5))
    write_shards(folder, str(tmp_path / "shards" / "s-%04d.tar"), maxcount=20)
    pixels = WebDatasetConfig(urls=str(tmp_path / "shards" / "s-0000.tar"), eval_urls=str(tmp_path / "shards" /
                              "s-0000.tar"), image_size=4, num_classes=2, shuffle_buffer=0).build()
    config = ConvAutoencoderConfig(downsample=2, latent_channels=2, width=8, blocks=0)
    torch.manual_seed(0)
    ae = config.build((3, 4, 4))
    ae.fit_latent_stats((b.x for b in pixels.eval_batches(20)), max_examples=20)
    path = save_autoencoder(tmp_path / "ae" / "autoencoder.pt", ae, config, (3, 4, 4))
    write_latent_shards(LatentSource(pixels, ae), str(tmp_path / "latents" / "l-%04d.tar"), None, 5, split="eval",
                        autoencoder_path=str(path))
    urls = str(tmp_path / "latents" / "l-{0000..0003}.tar")
    return LatentShardsConfig(urls=urls, eval_urls=urls, num_classes=2, shuffle_buffer=8), {"resume": "reseed",
                                                                                          "ranks": "differ"}


FIXTURES: dict[str, Callable] = {"image-folder": image_folder_source, "webdataset": webdataset_source,
                                 "latent-shards": latent_shards_source}
"""Name -> ``(tmp_path, image_folder) -> (config, check_data_source options)``; default: ``(config_cls(), {})``."""


@pytest.mark.parametrize("name", DATA_SOURCES.names())
def test_data_source_meets_the_contract(name, tmp_path, image_folder):
    if name in FIXTURES:
        config, options = FIXTURES[name](tmp_path, image_folder)
    else:
        config, options = DATA_SOURCES.get(name).config_cls(), {}
    assert DATA_SOURCES.name_of(config) == name
    testing.check_data_source(config, **options)


# -- the checks catch broken sources (never registered) -----------------------------------------------------


class Broken(DataSource):
    """Points ``(B, 2)``: step ``i`` of seed ``s`` drawn from ``manual_seed(1000 s + i)``, with one defect per test."""

    def __init__(self, bug: str) -> None:
        self.bug = bug
        self.spec = DataSpec((2,), num_classes=3)
        self.calls = itertools.count()

    def _batch(self, n: int, seed: int, step: int, offset: int = 0, total: int | None = None, fresh: bool = True) -> Batch:
        random = self.bug == "random" or (self.bug == "random-resume" and not fresh)
        gen = torch.Generator().manual_seed(1000 * seed + step + (next(self.calls) if random else 0))
        total = n if total is None else total
        x = torch.randn(total, 2, generator=gen)[offset : offset + n]
        label = torch.randint(0, 3, (total,), generator=gen)[offset : offset + n]
        if self.bug == "label-range":
            label = label + 1
        if self.bug == "shape":
            x = x[:, :1]
        return Batch(x, label)

    def train_batches(self, batch_size, *, seed, start_step=0, rank=0, world_size=1):
        for step in itertools.count(0 if self.bug == "resume" else start_step):
            if self.bug == "ranks":
                yield self._batch(batch_size, seed, step)  # every rank reads the same rows
            else:
                yield self._batch(batch_size, seed, step, rank * batch_size, batch_size * world_size, start_step == 0)

    def eval_batches(self, batch_size, *, max_examples=None):
        x = self._batch(10, 99, 0)
        n = 10 if max_examples is None or self.bug == "max-examples" else min(10, max_examples)
        for i in range(0, n, batch_size):
            yield Batch(x.x[i : min(i + batch_size, n)], x.label[i : min(i + batch_size, n)])

    def stats(self) -> dict:
        return {"tensor": torch.zeros(1)} if self.bug == "stats" else {"ok": 1}


@pytest.mark.parametrize(
    "bug, message",
    [
        ("random", "two fresh streams with seed=0 differ at step 0"),
        ("label-range", "labels outside 0 .. 2"),
        ("shape", r"training batch 0 \(seed=0\).x has shape \(8, 1\), expected \(8, 2\)"),
        ("resume", "start_step=2: batch 0 is not batch 2 of a fresh stream"),
        ("ranks", "ranks' batches of 4 do not concatenate"),
        ("max-examples", r"eval_batches\(max_examples=3\) yielded 10 examples"),
        ("stats", "not JSON-serialisable"),
    ],
)
def test_checks_catch_a_broken_source(bug, message):
    testing.check_data_source(Broken("none"))  # the healthy source passes
    with pytest.raises(AssertionError, match=message) as info:
        testing.check_data_source(Broken(bug))
    assert "data source Broken" in str(info.value)


def test_relaxed_stream_rules_still_require_determinism_and_distinct_ranks():
    testing.check_data_source(Broken("resume"), resume="reseed")
    with pytest.raises(AssertionError, match="ranks 0 and 1 got identical batches"):
        testing.check_data_source(Broken("ranks"), ranks="differ")
    with pytest.raises(AssertionError, match="resumed at start_step=2 differ"):
        testing.check_data_source(Broken("random-resume"), resume="reseed")
