"""webdataset: shard writing, round trips through DataLoader workers, rank splits, corrupt samples, the CLI."""

from __future__ import annotations

import io
import itertools
import tarfile
from collections import Counter

import pytest
import torch
import webdataset as wds
from PIL import Image

from ntm.data import DATA_SOURCES, DataError
from ntm.data.shards import CorruptSampleWarning, WebDatasetConfig, write_shards

NUM_IMAGES = 20


def take(stream, n: int) -> list:
    return list(itertools.islice(stream, n))


@pytest.fixture
def shards(tmp_path, image_folder):
    """20 images in classes a (even ids) / b (odd ids), captions on ids 0 and 3; 4 shards of <= 6."""
    folder = image_folder(tmp_path / "images", NUM_IMAGES, classes=("a", "b"), captions={0: "zero", 3: "three"})
    summary = write_shards(folder, str(tmp_path / "shards" / "train-%06d.tar"), maxcount=6)
    return summary, str(tmp_path / "shards" / "train-{000000..000003}.tar")


def source(urls: str, **fields):
    return WebDatasetConfig(urls=urls, image_size=4, num_classes=2, **fields).build()


def test_write_shards_layout(shards):
    summary, _ = shards
    assert summary.num_samples == NUM_IMAGES and summary.class_names == ("a", "b") and summary.num_captions == 2
    assert len(summary.shards) == 4
    members = []
    for shard in summary.shards:
        with tarfile.open(shard) as tar:
            members += tar.getnames()
    keys = Counter(name.split(".", 1)[0] for name in members)
    assert len(keys) == NUM_IMAGES
    extensions = Counter(name.split(".", 1)[1] for name in members)
    assert extensions == {"png": NUM_IMAGES, "cls": NUM_IMAGES, "txt": 2}
    raw = list(wds.WebDataset(summary.shards, shardshuffle=False).decode("pil"))
    assert sorted(s["cls"] for s in raw) == [0] * 10 + [1] * 10
    assert {s["txt"] for s in raw if "txt" in s} == {"zero", "three"}


def test_round_trip_with_two_workers_sees_every_sample_once_per_epoch(shards, ids_of):
    _, urls = shards
    src = source(urls, num_workers=2, shuffle_buffer=8)
    assert "webdataset" in DATA_SOURCES.names() and src.spec.shape == (3, 4, 4)
    batches = take(src.train_batches(4, seed=0), 10)  # two epochs of 20
    ids = [i for b in batches for i in ids_of(b.x)]
    assert sorted(ids[:NUM_IMAGES]) == list(range(NUM_IMAGES))
    assert sorted(ids[NUM_IMAGES:]) == list(range(NUM_IMAGES))
    assert ids[:NUM_IMAGES] != ids[NUM_IMAGES:]  # each epoch is reshuffled
    captions = {}
    for batch in batches:
        assert batch.x.dtype == torch.float32 and batch.x.shape == (4, 3, 4, 4)
        assert batch.label.tolist() == [i % 2 for i in ids_of(batch.x)]
        if batch.caption is not None:
            assert len(batch.caption) == 4
            captions.update({i: c for i, c in zip(ids_of(batch.x), batch.caption) if c})
    assert captions == {0: "zero", 3: "three"}
    assert src.skipped == 0


def test_stream_is_deterministic_and_resume_reseeds(shards, ids_of):
    _, urls = shards
    a = [ids_of(b.x) for b in take(source(urls, num_workers=2).train_batches(5, seed=1), 8)]
    b = [ids_of(b.x) for b in take(source(urls, num_workers=2).train_batches(5, seed=1), 8)]
    assert a == b
    assert a != [ids_of(b.x) for b in take(source(urls, num_workers=2).train_batches(5, seed=2), 8)]
    # start_step > 0 reseeds: deterministic, still whole epochs, but not a replay of the fresh stream
    r1 = [ids_of(b.x) for b in take(source(urls).train_batches(5, seed=1, start_step=3), 4)]
    r2 = [ids_of(b.x) for b in take(source(urls).train_batches(5, seed=1, start_step=3), 4)]
    assert r1 == r2
    assert sorted(i for ids in r1 for i in ids) == list(range(NUM_IMAGES))


def test_ranks_read_disjoint_shards(tmp_path, image_folder, ids_of):
    folder = image_folder(tmp_path / "images", NUM_IMAGES)
    write_shards(folder, str(tmp_path / "shards" / "s-%04d.tar"), maxcount=5)  # 4 shards of 5
    urls = str(tmp_path / "shards" / "s-{0000..0003}.tar")
    src = WebDatasetConfig(urls=urls, image_size=4, num_workers=2).build()
    assert next(src.train_batches(2, seed=0)).label is None  # unconditional
    epochs = []
    for rank in range(2):
        ids = [i for b in take(src.train_batches(5, seed=0, rank=rank, world_size=2), 4) for i in ids_of(b.x)]
        assert len(set(ids[:10])) == 10 and len(set(ids[10:])) == 10  # 2 shards of 5 per epoch, no repeats
        epochs.append(ids[:10])
    assert sorted(epochs[0] + epochs[1]) == list(range(NUM_IMAGES))
    with pytest.raises(DataError, match="shard"):
        next(src.train_batches(2, seed=0, rank=0, world_size=5))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_sample_is_skipped_warned_and_counted(tmp_path, shards, ids_of, num_workers):
    summary, _ = shards
    good = list(wds.WebDataset(summary.shards[:1], shardshuffle=False))  # 6 raw samples
    bad = str(tmp_path / "bad-%02d.tar")
    with wds.ShardWriter(bad, maxcount=4, verbose=0) as sink:
        for k, sample in enumerate(good):
            sink.write({"__key__": sample["__key__"], "png": sample["png"], "cls": sample["cls"]})
            if k == 2:
                sink.write({"__key__": "corrupt", "png": b"\x89PNG\r\n\x1a\nnot really", "cls": b"0"})
    src = source(str(tmp_path / "bad-{00..01}.tar"), num_workers=num_workers)
    with pytest.warns(CorruptSampleWarning, match="corrupt"):
        batch = next(src.train_batches(6, seed=0))
    expected = sorted(Image.open(io.BytesIO(s["png"])).getpixel((0, 0))[0] // 10 for s in good)
    assert sorted(ids_of(batch.x)) == expected  # the other six all arrive
    assert src.skipped == 1 and src.stats()["skipped"] == 1 and len(src.skip_messages) == 1


def test_eval_pass(shards, ids_of):
    _, urls = shards
    src = source(urls, eval_urls=urls, num_workers=2)
    batches = list(src.eval_batches(8))
    assert [b.x.shape[0] for b in batches] == [8, 8, 4]
    assert sorted(i for b in batches for i in ids_of(b.x)) == list(range(NUM_IMAGES))
    again = [ids_of(b.x) for b in src.eval_batches(8)]
    assert again == [ids_of(b.x) for b in batches]  # a fixed order
    assert sum(b.x.shape[0] for b in src.eval_batches(8, max_examples=11)) == 11
    assert list(source(urls).eval_batches(8)) == []  # no eval_urls: no held-out batches


def test_missing_shard_names_it(tmp_path):
    missing = tmp_path / "none-000000.tar"
    with pytest.raises(DataError, match=str(missing)):
        WebDatasetConfig(urls=str(missing)).build()


def test_ntm_shards_command(tmp_path, image_folder, capsys):
    from ntm.experiments.cli import main

    folder = image_folder(tmp_path / "images", 7)
    assert main(["shards", "write", "--folder", str(folder), "--out", str(tmp_path / "a" / "x-%03d.tar"),
                 "--maxcount", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x-000.tar", "x-001.tar", "x-002.tar"]
    capsys.readouterr()
    assert main(["shards", "write", "--folder", str(tmp_path / "missing"), "--out", str(tmp_path / "b" / "y-%03d.tar")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ntm shards: error: ") and "missing" in err[0]
    with pytest.raises(SystemExit) as info:
        main(["shards", "write", "--help"])
    assert info.value.code == 0 and "ntm shards write" in capsys.readouterr().out
