"""Cached latents: ``ntm shards write --encode`` and the ``latent-shards`` source against encoding on the fly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from ntm.experiments.cli import main
from ntm.autoencoders import ConvAutoencoderConfig, LatentSource, load_autoencoder, save_autoencoder
from ntm.data import DataError, DigitsConfig, LatentShardsConfig, ShapesConfig
from ntm.data import latent_shards as ls
from ntm.data.latent_shards import FolderImages, write_latent_shards

AE = ConvAutoencoderConfig(downsample=2, latent_channels=4, width=8, blocks=0)
SHAPES = ShapesConfig(image_size=16, train_size=64, eval_size=12)
SMALL = ["--train.warmup-steps", "0", "--train.log-every", "1", "--eval.num-examples", "64",
         "--predictor.width", "32", "--predictor.depth", "2", "--transporter.width", "16",
         "--transporter.num-heads", "2"]


def make_autoencoder(path: Path, image_shape: tuple[int, int, int], images, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    ae = AE.build(image_shape)
    ae.fit_latent_stats(images, max_examples=128)
    save_autoencoder(path / "autoencoder.pt", ae, AE, image_shape)
    return path


@pytest.fixture(scope="module")
def digits_ae(tmp_path_factory) -> Path:
    """A tiny 1-channel x2 autoencoder for 8x8 digits: latents (4, 4, 4)."""
    batches = (b.x for b in DigitsConfig().build().train_batches(64, seed=0))
    return make_autoencoder(tmp_path_factory.mktemp("ae"), (1, 8, 8), batches)


@pytest.fixture(scope="module")
def digit_latents(tmp_path_factory, digits_ae) -> dict:
    """Digits encoded once: 60 training latents in 4 shards and the held-out split in 3, in one directory."""
    out = tmp_path_factory.mktemp("lat")
    for args in (["--count", "60", "--maxcount", "15", "--out", str(out / "train-%03d.tar")],
                 ["--split", "eval", "--maxcount", "100", "--out", str(out / "eval-%03d.tar")]):
        assert main(["shards", "write", "--encode", str(digits_ae), "--source", "digits", *args]) == 0
    return {"dir": out, "urls": str(out / "train-{000..003}.tar"), "eval_urls": str(out / "eval-{000..002}.tar")}


def shards(config_or_dir, **fields):
    return LatentShardsConfig(urls=config_or_dir["urls"], eval_urls=config_or_dir["eval_urls"], **fields).build()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cached_latents_equal_encoding_on_the_fly(digit_latents, digits_ae):
    ae, _ = load_autoencoder(digits_ae)
    fly = LatentSource(DigitsConfig().build(), ae)
    cached = shards(digit_latents)
    assert cached.spec == fly.spec  # shape, classes, kind, fingerprint and image shape
    assert cached.spec.encoded_by == ae.fingerprint() and cached.spec.image_shape == (1, 8, 8)
    for batch_size in (256, 50):
        got, want = list(cached.eval_batches(batch_size)), list(fly.eval_batches(batch_size))
        assert [b.x.shape[0] for b in got] == [b.x.shape[0] for b in want]
        for a, b in zip(got, want):
            assert a.x.dtype == torch.float32 and torch.equal(a.x, b.x) and torch.equal(a.label, b.label)
    # the training shards hold the first 60 examples of the seeded stream, bit for bit
    first = next(fly.train_batches(60, seed=0))
    written = torch.cat([b.x for b in cached._in_order_batches(cached.urls, 60)])
    assert torch.equal(written, first.x)
    meta = json.loads((digit_latents["dir"] / "latents.json").read_text())
    assert meta["format"] == "ntm-latent-shards-1" and meta["autoencoder"] == ae.fingerprint()
    assert meta["latent_shape"] == [4, 4, 4] and meta["image_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert [e["file"] for e in meta["shards"]] == [f"train-{i:03d}.tar" for i in range(4)] + [
        f"eval-{i:03d}.tar" for i in range(3)]
    assert meta["num_samples"] == 60 + sum(b.x.shape[0] for b in want)


def test_training_stream_reads_every_latent_once_per_epoch_with_workers(digit_latents, digits_ae):
    ae, _ = load_autoencoder(digits_ae)
    expected = next(LatentSource(DigitsConfig().build(), ae).train_batches(60, seed=0))
    rows = {expected.x[i].numpy().tobytes(): int(expected.label[i]) for i in range(60)}
    source = shards(digit_latents, num_workers=2, shuffle_buffer=8)
    batches = list(itertools.islice(source.train_batches(10, seed=3), 12))  # two epochs
    seen = [(b.x[i].numpy().tobytes(), int(b.label[i])) for b in batches for i in range(10)]
    for epoch in (seen[:60], seen[60:]):
        assert sorted(key for key, _ in epoch) == sorted(rows) and all(rows[k] == label for k, label in epoch)
    again = list(itertools.islice(shards(digit_latents, num_workers=2, shuffle_buffer=8).train_batches(10, seed=3), 12))
    assert all(torch.equal(a.x, b.x) for a, b in zip(batches, again))
    halves = [[b.x for b in itertools.islice(source.train_batches(5, seed=3, rank=r, world_size=2), 6)] for r in (0, 1)]
    keys = [{x[i].numpy().tobytes() for x in xs for i in range(5)} for xs in halves]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 60  # two shards each, disjoint


def test_captions_and_annotations_travel_with_the_latents(tmp_path):
    ae_dir = make_autoencoder(tmp_path / "ae", (3, 16, 16), (b.x for b in SHAPES.build().train_batches(32, seed=0)))
    ae, _ = load_autoencoder(ae_dir)
    fly = LatentSource(SHAPES.build(), ae)
    summary = write_latent_shards(fly, str(tmp_path / "lat" / "eval-%02d.tar"), maxcount=5, split="eval")
    assert summary.num_samples == 12 and summary.num_captions == 12 and summary.num_annotations == 12
    assert len(summary.shards) == 3 and summary.autoencoder == ae.fingerprint()
    urls = str(tmp_path / "lat" / "eval-{00..02}.tar")
    cached = LatentShardsConfig(urls=urls, eval_urls=urls).build()
    (got,), (want,) = list(cached.eval_batches(64)), list(fly.eval_batches(64))
    assert torch.equal(got.x, want.x) and got.label is None
    assert got.caption == want.caption and got.annotation == want.annotation


def test_a_folder_is_encoded_at_the_autoencoders_size_with_labels_and_captions(tmp_path, image_folder, capsys):
    ae_dir = make_autoencoder(tmp_path / "ae", (3, 16, 16), (b.x for b in SHAPES.build().train_batches(32, seed=0)))
    folder = image_folder(tmp_path / "images", 9, classes=("a", "b"), captions={0: "zero", 4: "four"})
    out = tmp_path / "lat"
    assert main(["shards", "write", "--encode", str(ae_dir), "--folder", str(folder), "--out", str(out / "f-%03d.tar"),
                 "--maxcount", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 9 latents 4x8x8 of autoencoder ") and "(2 classes, 2 captions)" in line
    ae, _ = load_autoencoder(ae_dir)
    (want,) = list(LatentSource(FolderImages(folder, (3, 16, 16), seed=0), ae).eval_batches(64))
    urls = str(out / "f-{000..002}.tar")
    (got,) = list(LatentShardsConfig(urls=urls, eval_urls=urls).build().eval_batches(64))
    assert torch.equal(got.x, want.x) and torch.equal(got.label, want.label) and got.caption == want.caption
    assert sorted(c for c in got.caption if c) == ["four", "zero"]
    assert json.loads((out / "latents.json").read_text())["class_names"] == ["a", "b"]


def test_a_run_trains_on_cached_latents_and_samples_pixels(digit_latents, digits_ae, tmp_path, capsys):
    run_dir = tmp_path / "run"
    data = ["data:latent-shards", "--data.urls", digit_latents["urls"], "--data.eval-urls", digit_latents["eval_urls"],
            "autoencoder:pretrained", "--autoencoder.path", str(digits_ae)]
    rc = main(["train", "digits-ntm", "--run-dir", str(run_dir), *data, "--train.steps", "3",
               "--train.sample-every", "0", *SMALL])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run_dir / "final.json").read_text())["steps"] == 3
    assert json.loads((run_dir / "data_stats.json").read_text())["autoencoder"] == shards(digit_latents).spec.encoded_by
    rc = main(["sample", "--run", str(run_dir), "--steps", "4", "--out", str(tmp_path / "g.png")])
    assert rc == 0, capsys.readouterr().err
    from PIL import Image

    cell = 8 * 8 + 1  # decoded 8x8 digits upscaled 8x, 1 px padding: the pixel model's grid
    for png in (tmp_path / "g.png", run_dir / "samples" / "final.png"):
        with Image.open(png) as image:
            assert image.size == (10 * cell + 1, 12 * cell + 1) and image.mode == "L"


def test_shards_of_another_autoencoder_are_refused(digit_latents, tmp_path, capsys):
    other = make_autoencoder(tmp_path / "other", (1, 8, 8),
                             (b.x for b in DigitsConfig().build().train_batches(64, seed=0)), seed=1)
    rc = main(["train", "digits-ntm", "--run-dir", str(tmp_path / "run"), "data:latent-shards", "--data.urls",
               digit_latents["urls"], "autoencoder:pretrained", "--autoencoder.path", str(other),
               "--train.steps", "1", *SMALL])
    assert rc == 2
    line = one_error_line(capsys)
    written = shards(digit_latents).spec.encoded_by
    mine, _ = load_autoencoder(other)
    assert line.startswith("ntm train: error: ") and written in line and mine.fingerprint() in line
    # writing latents of the other autoencoder into that directory under a new pattern: refused, nothing touched
    before = sorted(p.name for p in digit_latents["dir"].iterdir())
    rc = main(["shards", "write", "--encode", str(other), "--source", "digits", "--split", "eval",
               "--out", str(digit_latents["dir"] / "more-%03d.tar")])
    assert rc == 2 and written in one_error_line(capsys)
    assert sorted(p.name for p in digit_latents["dir"].iterdir()) == before


def test_encode_needs_an_autoencoder_file(tmp_path, capsys):
    not_ae = tmp_path / "notes.pt"
    not_ae.write_text("not an autoencoder")
    for path in (tmp_path / "missing", not_ae, tmp_path):
        out = tmp_path / "lat" / "x-%03d.tar"
        rc = main(["shards", "write", "--encode", str(path), "--source", "digits", "--split", "eval",
                   "--out", str(out)])
        assert rc == 2
        line = one_error_line(capsys)
        assert line.startswith("ntm shards: error: ") and str(path) in line
        assert not (tmp_path / "lat").exists()


def test_images_that_do_not_fit_the_autoencoder_write_nothing(digits_ae, tmp_path, image_folder, capsys):
    folder = image_folder(tmp_path / "images", 4)
    out = tmp_path / "lat"
    for source in (["--source", "image-folder", "--source-options", f"path={folder}", "image_size=5", "channels=1"],
                   ["--source", "shapes", "--source-options", "image_size=16", "train_size=8", "eval_size=4"]):
        rc = main(["shards", "write", "--encode", str(digits_ae), *source, "--split", "eval",
                   "--out", str(out / "x-%03d.tar")])
        assert rc == 2
        line = one_error_line(capsys)
        assert "do not fit" in line and not out.exists()


class Killed(Exception):
    pass


def test_a_write_killed_midway_leaves_no_sidecar_and_reading_refuses(digits_ae, tmp_path, monkeypatch, capsys):
    out = tmp_path / "lat"
    args = ["shards", "write", "--encode", str(digits_ae), "--source", "digits", "--count", "30", "--maxcount", "10",
            "--out", str(out / "t-%03d.tar")]
    assert main(args) == 0 and (out / "latents.json").is_file()  # a complete earlier write
    capsys.readouterr()
    calls = itertools.count()
    real = ls.npy_bytes

    def dies_in_the_second_shard(latent):
        if next(calls) == 12:
            raise Killed()
        return real(latent)

    monkeypatch.setattr(ls, "npy_bytes", dies_in_the_second_shard)
    with pytest.raises(Killed):
        main(args)
    assert (out / "t-000.tar").is_file() and not (out / "latents.json").exists()
    assert not list(out.glob("latents.json.tmp-*"))
    with pytest.raises(DataError, match="latents.json is missing: not latent shards or an incomplete write"):
        LatentShardsConfig(urls=str(out / "t-000.tar")).build()
    rc = main(["train", "digits-ntm", "--run-dir", str(tmp_path / "run"), "data:latent-shards", "--data.urls",
               str(out / "t-{000..002}.tar"), "autoencoder:pretrained", "--autoencoder.path", str(digits_ae), *SMALL])
    assert rc == 2 and str(out / "latents.json") in one_error_line(capsys)


def test_unlisted_shards_bad_sidecars_and_showing_bare_latents(digit_latents, tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x-000.tar").write_bytes((digit_latents["dir"] / "train-000.tar").read_bytes())
    (stray / "latents.json").write_text("{not json")
    with pytest.raises(DataError, match=f"{stray / 'latents.json'} does not read as JSON"):
        LatentShardsConfig(urls=str(stray / "x-000.tar")).build()
    (stray / "latents.json").write_text((digit_latents["dir"] / "latents.json").read_text())
    with pytest.raises(DataError, match="x-000.tar is not listed in"):
        LatentShardsConfig(urls=str(stray / "x-000.tar")).build()
    source = shards(digit_latents)
    source.meta = {**source.meta, "autoencoder_path": str(tmp_path / "moved-away")}  # the autoencoder is gone
    with pytest.raises(DataError, match="cannot be shown without it.*autoencoder:pretrained"):
        source.to_display(next(source.eval_batches(2)).x)
    assert source.stats()["autoencoder"] == source.spec.encoded_by


def test_identity_run_on_latent_shards_is_refused_before_training(digit_latents, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "digits-ntm", "data:latent-shards", "--data.urls", digit_latents["urls"], "--run-dir",
            str(run_dir), "--train.steps", "2", *SMALL]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "yields latents of autoencoder" in line and "autoencoder:pretrained" in line
    assert not run_dir.exists()


def test_raw_latent_shards_show_through_the_autoencoder_that_wrote_them(digit_latents, digits_ae):
    source = shards(digit_latents)
    batch = next(iter(source.eval_batches(5)))
    model, _ = load_autoencoder(digits_ae)
    with torch.no_grad():
        expected = ((model.decode(batch.x) + 1) / 2).clamp(0, 1)
    shown = source.to_display(batch.x)
    assert shown.shape == (5, 1, 8, 8) and torch.allclose(shown, expected)
