"""A shard (or a shard URL) from someone else never runs code.

- Members the source does not declare (``.pyd``, ``.pkl``, ``.pickle``, ``.pth``: webdataset's default decoders
  unpickle / ``torch.load`` them) are dropped undecoded from ``webdataset`` and ``latent-shards`` samples, with one
  :class:`IgnoredMembersWarning` per shard; the declared members are still read; the marker file their pickles
  would create never appears.
- A ``latent.npy`` holding an object array (or a bare pickle) is a corrupt sample, never unpickled.
- A ``pipe:`` URL in a saved run config is refused in one line (exit 2) by the commands that build the data, unless
  ``NTM_ALLOW_PIPE_URLS=1`` is in the environment; no config field can allow it.
- A failed ``ntm shards write`` leaves no partial tar under a shard's name, and no temporary file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pydantic
import pytest
import torch
import webdataset as wds
from PIL import Image

from ntm.atomic import TMP_INFIX
from ntm.data import DataError, LatentShardsConfig, WebDatasetConfig
from ntm.data import latent_shards as ls
from ntm.data import shards as shards_module
from ntm.data.streaming import PIPE_ENV, CorruptSampleWarning, IgnoredMembersWarning
from ntm.experiments.cli import main
from tests.faults.payloads import payloads

EXTRAS = ("pyd", "pkl", "pickle", "pth")
"""Member extensions webdataset's default decoder chain would unpickle (``.pth``: torch.load, weights_only=False)."""


PAYLOADS = payloads("Path.touch", "os.system", "open")


def payload_bytes(extension: str, payload) -> bytes:
    """What a ``.EXT`` member holds so that webdataset's default decoder for it runs ``payload``."""
    if extension == "pth":
        out = io.BytesIO()
        torch.save(payload, out)
        return out.getvalue()
    return pickle.dumps(payload)


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (6, 6), (10 * i, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def write_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def image_shard(path: pathlib.Path, ids: range, extras: dict[str, bytes]) -> str:
    """Samples ``i`` with a PNG (red = 10 i), ``cls`` = i % 2, a caption and ``extras`` members on each."""
    members: list[tuple[str, bytes]] = []
    for i in ids:
        key = f"{i:04d}"
        members += [(f"{key}.png", png(i)), (f"{key}.cls", str(i % 2).encode()), (f"{key}.txt", f"c{i}".encode())]
        members += [(f"{key}.{ext}", data) for ext, data in extras.items()]
    return write_tar(path, members)


def read_ids(source, n: int) -> tuple[list[int], list[int], list[str]]:
    """The first ``n`` training examples -> (image ids, labels, captions); the stream is read on into the next epoch,
    so that each shard of the first has been read to its end (and reported)."""
    stream = source.train_batches(n, seed=0)
    batch = next(stream)
    next(stream)
    red = (batch.x[:, 0] + 1) / 2 * 255
    return torch.round(red.mean(dim=(1, 2)) / 10).long().tolist(), batch.label.tolist(), list(batch.caption or [])


def of_kind(record, kind) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, kind)]


def test_the_payloads_are_live_under_webdatasets_default_decoders(tmp_path):
    """The premise: ``decode("pil")`` (what the source used to run) executes each member's payload."""
    for ext in EXTRAS:
        marker = tmp_path / f"ran-{ext}"
        shard = image_shard(tmp_path / f"{ext}.tar", range(1), {ext: payload_bytes(ext, PAYLOADS["Path.touch"](marker))})
        list(wds.WebDataset([shard], shardshuffle=False).decode("pil"))
        assert marker.exists(), ext


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
@pytest.mark.parametrize("ext", EXTRAS)
def test_an_undeclared_member_is_dropped_undecoded(tmp_path, ext, payload):
    marker = tmp_path / "MARKER"
    shard = image_shard(tmp_path / "s.tar", range(4), {ext: payload_bytes(ext, payload(marker))})
    source = WebDatasetConfig(urls=shard, image_size=4, num_classes=2, shuffle_buffer=0).build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ids, labels, captions = read_ids(source, 4)
    assert not marker.exists()
    assert sorted(ids) == [0, 1, 2, 3] and labels == [i % 2 for i in ids] and captions == [f"c{i}" for i in ids]
    ignored = of_kind(record, IgnoredMembersWarning)
    assert len(ignored) == 1 and shard in ignored[0] and f".{ext}" in ignored[0], ignored
    assert not of_kind(record, CorruptSampleWarning) and source.skipped == 0
    assert source.ignored_members == {shard: [ext]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_warning_per_shard_naming_every_ignored_extension(tmp_path, num_workers):
    marker = tmp_path / "MARKER"
    extras = {ext: payload_bytes(ext, PAYLOADS["os.system"](marker)) for ext in EXTRAS}
    a = image_shard(tmp_path / "a.tar", range(0, 5), extras)
    b = image_shard(tmp_path / "b.tar", range(5, 10), {"pyd": extras["pyd"], "foo.bar": b"x"})
    clean = image_shard(tmp_path / "c.tar", range(10, 12), {})
    source = WebDatasetConfig(urls=f"{a}::{b}::{clean}", image_size=4, num_classes=2, num_workers=num_workers,
                              shuffle_buffer=3).build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stream = source.train_batches(4, seed=0)
        ids = [i for _ in range(6) for i in read_ids_of(next(stream))]  # two epochs of 12
    assert not marker.exists()
    assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    ignored = of_kind(record, IgnoredMembersWarning)
    assert len(ignored) == 2, ignored  # one per shard that held extras, over both epochs
    by_shard = {next(s for s in (a, b) if s in w): w for w in ignored}
    assert all(f".{ext}" in by_shard[a] for ext in EXTRAS)
    assert ".pyd" in by_shard[b] and ".foo.bar" in by_shard[b] and ".pth" not in by_shard[b]
    assert not of_kind(record, CorruptSampleWarning)


def read_ids_of(batch) -> list[int]:
    red = (batch.x[:, 0] + 1) / 2 * 255
    return torch.round(red.mean(dim=(1, 2)) / 10).long().tolist()


def test_an_image_member_holding_a_pickle_is_a_corrupt_sample(tmp_path):
    marker = tmp_path / "MARKER"
    good = image_shard(tmp_path / "s.tar", range(3), {})
    bad = write_tar(tmp_path / "bad.tar", [("9999.png", pickle.dumps(PAYLOADS["Path.touch"](marker))), ("9999.cls", b"1"),
                                           ("9998.jpg", payload_bytes("pth", PAYLOADS["Path.touch"](marker))), ("9998.cls", b"0")])
    source = WebDatasetConfig(urls=good, eval_urls=f"{good}::{bad}", image_size=4, num_classes=2).build()
    with pytest.warns(CorruptSampleWarning):
        batches = list(source.eval_batches(8))  # one pass
    assert [read_ids_of(b) for b in batches] == [[0, 1, 2]] and source.skipped == 2 and not marker.exists()


# -- latent-shards -----------------------------------------------------------------

LATENT_SHAPE = (2, 2, 2)


def latent_npy(value: float) -> bytes:
    return ls.npy_bytes(torch.full(LATENT_SHAPE, float(value)))


def object_npy(payload) -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([payload], dtype=object), allow_pickle=True)
    return out.getvalue()


def latent_shards(directory: pathlib.Path, shards: dict[str, list[tuple[str, bytes]]]) -> str:
    """Write tar shards ``{file: members}`` and the sidecar listing them; returns the ``::`` URL list."""
    urls = [write_tar(directory / name, members) for name, members in shards.items()]
    meta = {"format": ls.FORMAT, "autoencoder": "00c0ffee00c0ffee", "autoencoder_path": None,
            "latent_shape": list(LATENT_SHAPE), "image_shape": [1, 4, 4], "num_classes": 2, "class_names": ["a", "b"],
            "num_samples": sum(len(m) for m in shards.values()),
            "shards": [{"file": name, "samples": 0, "source": {}} for name in shards], "source": {}}
    (directory / ls.SIDECAR).write_text(json.dumps(meta))
    return "::".join(urls)


def latent_samples(ids: range, extras: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    members = []
    for i in ids:
        members += [(f"{i:04d}.latent.npy", latent_npy(i)), (f"{i:04d}.cls", str(i % 2).encode())]
        members += [(f"{i:04d}.{ext}", data) for ext, data in (extras or {}).items()]
    return members


def latent_values(batch) -> list[int]:
    return [int(v) for v in batch.x.flatten(1)[:, 0].tolist()]


@pytest.mark.parametrize("ext", EXTRAS)
def test_latent_shards_drop_undeclared_members(tmp_path, ext):
    marker = tmp_path / "MARKER"
    extras = {ext: payload_bytes(ext, PAYLOADS["Path.touch"](marker))}
    urls = latent_shards(tmp_path / "lat", {"t-0.tar": latent_samples(range(3), extras),
                                            "t-1.tar": latent_samples(range(3, 6), extras)})
    source = LatentShardsConfig(urls=urls, shuffle_buffer=0).build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stream = source.train_batches(6, seed=0)
        batch = next(stream)
        next(stream)  # into the second epoch: the first one's shards are read to their ends
    assert not marker.exists()
    assert sorted(latent_values(batch)) == list(range(6)) and batch.label.tolist() == [v % 2 for v in latent_values(batch)]
    ignored = of_kind(record, IgnoredMembersWarning)
    assert len(ignored) == 2 and all(f".{ext}" in w for w in ignored), ignored
    assert {w.split(": ")[1] for w in ignored} == set(urls.split("::"))
    assert not of_kind(record, CorruptSampleWarning)


@pytest.mark.parametrize("kind", ["object array", "bare pickle", "npz"])
def test_a_latent_npy_that_would_unpickle_is_a_corrupt_sample(tmp_path, kind):
    marker = tmp_path / "MARKER"
    if kind == "object array":
        bad = object_npy(PAYLOADS["Path.touch"](marker))
        with pytest.raises(ValueError):  # the premise: only allow_pickle=True would run it
            np.load(io.BytesIO(bad), allow_pickle=False)
    elif kind == "bare pickle":
        bad = pickle.dumps(PAYLOADS["os.system"](marker))
    else:
        out = io.BytesIO()
        np.savez(out, latent=np.array([PAYLOADS["Path.touch"](marker)], dtype=object), allow_pickle=True)
        bad = out.getvalue()
    urls = latent_shards(tmp_path / "lat", {"t-0.tar": latent_samples(range(4)) + [("9999.latent.npy", bad),
                                                                                    ("9999.cls", b"1")]})
    source = LatentShardsConfig(urls=urls).build()
    with pytest.warns(CorruptSampleWarning):
        batch = next(source.train_batches(4, seed=0))
    assert sorted(latent_values(batch)) == [0, 1, 2, 3] and source.skipped == 1
    assert not marker.exists()


# -- pipe: URLs -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["pipe:touch {marker}", "PIPE:touch {marker}", "Pipe:touch {marker}"])
def test_a_pipe_url_needs_the_environment_flag(tmp_path, monkeypatch, url):
    monkeypatch.delenv(PIPE_ENV, raising=False)
    marker = tmp_path / "MARKER"
    shard = image_shard(tmp_path / "s.tar", range(2), {})
    with pytest.raises(DataError, match=f"data.urls .*pipe: URL.*{PIPE_ENV}=1") as err:
        WebDatasetConfig(urls=url.format(marker=marker)).build()
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(DataError, match=f"data.eval_urls .*{PIPE_ENV}=1"):
        WebDatasetConfig(urls=shard, eval_urls=url.format(marker=marker)).build()
    with pytest.raises(DataError, match=f"data.urls .*{PIPE_ENV}=1"):
        LatentShardsConfig(urls=url.format(marker=marker)).build()
    monkeypatch.setenv(PIPE_ENV, "true")  # only "1" allows it
    with pytest.raises(DataError, match=PIPE_ENV):
        WebDatasetConfig(urls=url.format(marker=marker)).build()
    assert not marker.exists()
    # no config field can allow it (unknown fields are refused)
    with pytest.raises(pydantic.ValidationError):
        WebDatasetConfig.model_validate({"urls": url.format(marker=marker), "allow_pipe_urls": True})


def test_with_the_flag_a_pipe_url_reads_the_shard(tmp_path, monkeypatch):
    shard = image_shard(tmp_path / "s.tar", range(3), {})
    monkeypatch.setenv(PIPE_ENV, "1")
    source = WebDatasetConfig(urls=f"pipe:cat {shard}", image_size=4, num_classes=2).build()
    ids, _, _ = read_ids(source, 3)
    assert sorted(ids) == [0, 1, 2]


@pytest.fixture(scope="module")
def saved_config(tmp_path_factory) -> dict:
    """A digits-ntm run's config on webdataset shards, as ``config.json`` holds it (the ``--dry-run`` dump)."""
    root = tmp_path_factory.mktemp("pipe")
    shard = image_shard(root / "shards" / "t-0.tar", range(8), {})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["train", "digits-ntm", "data:webdataset", "--data.urls", shard, "--data.image-size", "8",
                     "--data.channels", "1", "--data.num-classes", "2", "--run-dir", str(root / "run"),
                     "--dry-run"]) == 0
    return json.loads(buf.getvalue())


@pytest.mark.parametrize("field", ["urls", "eval_urls"])
@pytest.mark.parametrize("command", ["eval", "sample", "train --config"])
def test_a_saved_config_with_a_pipe_url_is_refused_in_one_line(saved_config, tmp_path, capsys, monkeypatch, command,
                                                               field):
    monkeypatch.delenv(PIPE_ENV, raising=False)
    marker = tmp_path / "MARKER"
    run = tmp_path / "shared-run"
    run.mkdir()
    config = json.loads(json.dumps(saved_config))
    config["data"][field] = f"pipe:touch {marker}"
    (run / "config.json").write_text(json.dumps(config, indent=2))
    capsys.readouterr()
    args = {"eval": ["eval", "--run", str(run)], "sample": ["sample", "--run", str(run)],
            "train --config": ["train", "--config", str(run / "config.json"), "--run-dir", str(tmp_path / "again")]}
    status = main(args[command])
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists()
    assert status == 2 and len(err) == 1, err
    name = command.split()[0]
    assert err[0].startswith(f"ntm {name}: error: webdataset: data.{field} ") and f"{PIPE_ENV}=1" in err[0], err


@pytest.mark.slow
def test_a_trained_runs_config_edited_to_a_pipe_url_is_refused_by_ntm_eval(tmp_path):
    """End to end, as someone receiving the run: a real run on webdataset shards, its config.json edited, then the
    ``ntm eval --run`` process: exit 2, one line, no marker."""
    shard = image_shard(tmp_path / "shards" / "t-0.tar", range(16), {})
    run = tmp_path / "run"
    small = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16",
             "--predictor.depth", "1", "--train.warmup-steps", "0", "--train.sample-every", "0",
             "--eval.num-examples", "8"]
    assert main(["train", "digits-ntm", "data:webdataset", "--data.urls", shard, "--data.eval-urls", shard,
                 "--data.image-size", "8", "--data.channels", "1", "--data.num-classes", "2", "--run-dir", str(run),
                 "--train.steps", "1", *small]) == 0
    marker = tmp_path / "MARKER"
    config = json.loads((run / "config.json").read_text())
    config["data"]["eval_urls"] = f"pipe:touch {marker}"
    (run / "config.json").write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if k != PIPE_ENV}
    result = subprocess.run([sys.executable, "-m", "ntm.experiments.cli", "eval", "--run", str(run)], env=env,
                            capture_output=True, text=True, timeout=300)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("ntm eval: error: webdataset: data.eval_urls 'pipe:touch ") and PIPE_ENV in err[0]
    assert not marker.exists()


# -- ntm shards write: no partial tar under a shard's name ------------------------------


class Killed(BaseException):
    pass


def shard_files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def image_folder(root: pathlib.Path, n: int) -> pathlib.Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (6, 6), (10 * i, 0, 0)).save(root / f"img{i:03d}.png")
    return root


def test_a_write_that_fails_midway_leaves_no_partial_shard(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", 10)
    out = tmp_path / "shards"
    real, calls = shards_module._png_bytes, []

    def dies_on_the_seventh(file):
        calls.append(file)
        if len(calls) == 7:
            raise Killed()
        return real(file)

    monkeypatch.setattr(shards_module, "_png_bytes", dies_on_the_seventh)
    with pytest.raises(Killed):
        shards_module.write_shards(folder, str(out / "s-%03d.tar"), maxcount=4)
    assert shard_files(out) == ["s-000.tar"]  # the complete first shard; no s-001.tar, no temporary
    with tarfile.open(out / "s-000.tar") as tar:
        assert len(tar.getnames()) == 4


def test_a_failing_close_leaves_no_shard_and_no_temporary(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", 3)
    out = tmp_path / "shards"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards_module.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        shards_module.write_shards(folder, str(out / "s-%03d.tar"), maxcount=10)
    assert shard_files(out) == []
    assert not any(TMP_INFIX in p.name for p in tmp_path.rglob("*"))


def test_shards_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", 5)
    out = tmp_path / "shards"
    seen: list[list[str]] = []
    real = shards_module._png_bytes

    def spy(file):
        seen.append(shard_files(out) if out.exists() else [])
        return real(file)

    monkeypatch.setattr(shards_module, "_png_bytes", spy)
    summary = shards_module.write_shards(folder, str(out / "s-%03d.tar"), maxcount=3)
    assert summary.shards == (str(out / "s-000.tar"), str(out / "s-001.tar"))
    assert seen[1] and all(TMP_INFIX in name for name in seen[1])  # shard 0 open: only its temporary exists
    assert "s-000.tar" in seen[4] and any(TMP_INFIX in n for n in seen[4])  # shard 0 renamed, shard 1 open
    assert shard_files(out) == ["s-000.tar", "s-001.tar"]
    with pytest.raises(ValueError, match="local path"):
        shards_module.write_shards(folder, "pipe:cat > %03d.tar")
