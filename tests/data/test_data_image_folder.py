"""image-folder: reading flat and class folders, normalisation, splits, streams, and errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from ntm.data import DATA_SOURCES, DataError, ImageFolderConfig


def take(stream, n: int) -> list:
    return list(itertools.islice(stream, n))


def test_flat_folder_reads_back_every_image(tmp_path, image_folder, ids_of):
    root = image_folder(tmp_path / "flat", 10)
    source = ImageFolderConfig(path=str(root), image_size=8, channels=3, eval_fraction=0.2).build()
    assert "image-folder" in DATA_SOURCES.names()
    assert source.spec.shape == (3, 8, 8) and source.spec.num_classes == 0 and source.spec.kind == "images"
    assert source.num_train == 8 and source.num_eval == 2
    epoch = next(source.train_batches(8, seed=0))
    held = torch.cat([b.x for b in source.eval_batches(4)])
    assert epoch.x.dtype == torch.float32 and epoch.label is None
    assert epoch.x.min() >= -1 and epoch.x.max() <= 1
    train_ids, held_ids = ids_of(epoch.x), ids_of(held)
    assert sorted(train_ids + held_ids) == list(range(10))  # disjoint, complete
    # solid colours survive the resize exactly: (10 i, 255 - 10 i, 7) / 255 * 2 - 1
    for x, i in zip(epoch.x, train_ids):
        expected = torch.tensor([10 * i, 255 - 10 * i, 7], dtype=torch.float32) / 255 * 2 - 1
        assert torch.allclose(x, expected[:, None, None].expand(3, 8, 8), atol=1e-6)
    display = source.to_display(epoch.x)
    assert display.min() >= 0 and display.max() <= 1


def test_class_subfolders_give_sorted_labels(tmp_path, image_folder, ids_of):
    root = image_folder(tmp_path / "classes", 12, classes=("dog", "cat"))  # even ids -> dog, odd -> cat
    source = ImageFolderConfig(path=str(root), image_size=6, eval_fraction=0.25).build()
    assert source.spec.num_classes == 2 and source.class_names == ("cat", "dog")
    assert source.stats()["class_names"] == ["cat", "dog"]
    batches = [next(source.train_batches(source.num_train, seed=0)), *source.eval_batches(100)]
    for batch in batches:
        assert batch.label.dtype == torch.int64
        for i, label in zip(ids_of(batch.x), batch.label.tolist()):
            assert label == (1 if i % 2 == 0 else 0)  # "cat" = 0, "dog" = 1


def test_greyscale_and_non_square_resize(tmp_path):
    root = tmp_path / "grey"
    root.mkdir()
    Image.new("RGB", (20, 10), (200, 200, 200)).save(root / "a.png")
    Image.new("L", (10, 30), 50).save(root / "b.jpg", quality=100)
    source = ImageFolderConfig(path=str(root), image_size=5, channels=1, eval_fraction=0.0).build()
    x = next(source.train_batches(2, seed=0)).x
    assert x.shape == (2, 1, 5, 5)
    values = sorted(round(((v + 1) / 2 * 255).item()) for v in x.mean(dim=(1, 2, 3)))
    assert abs(values[0] - 50) <= 2 and values[1] == 200  # jpg is lossy


def test_stream_rules_hold(tmp_path, image_folder):
    root = image_folder(tmp_path / "s", 9)
    source = ImageFolderConfig(path=str(root), image_size=4, eval_fraction=0.0).build()
    fresh = take(source.train_batches(4, seed=1), 5)
    assert torch.equal(next(source.train_batches(4, seed=1, start_step=3)).x, fresh[3].x)
    assert torch.equal(take(source.train_batches(4, seed=1), 5)[4].x, fresh[4].x)
    ranks = [take(source.train_batches(2, seed=1, rank=r, world_size=2), 5) for r in range(2)]
    for step in range(5):
        assert torch.equal(torch.cat([ranks[0][step].x, ranks[1][step].x]), fresh[step].x)


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        ImageFolderConfig(path=str(missing)).build()
    message = str(info.value)
    assert str(missing) in message and "\n" not in message


def test_empty_folder_names_it(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images") as info:
        ImageFolderConfig(path=str(empty)).build()
    assert str(empty) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_names_the_file(tmp_path, image_folder):
    root = image_folder(tmp_path / "bad", 3)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolderConfig(path=str(root), image_size=4).build()


def test_mixed_layout_is_rejected(tmp_path, image_folder):
    root = image_folder(tmp_path / "mixed", 4, classes=("a", "b"))
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    with pytest.raises(DataError, match="mixes"):
        ImageFolderConfig(path=str(root), image_size=4).build()
