"""webdataset at scale: ranks x DataLoader workers read every shard's samples exactly once per pass."""

from __future__ import annotations

import io
import itertools
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image

from ntm.data.shards import WebDatasetConfig

PER_SHARD = 3


def write_id_shards(folder, num_shards: int) -> str:
    """``num_shards`` shards of ``PER_SHARD`` 1x1 images each; every sample's caption is its id ``"<shard>-<i>"``."""
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 7).save(buffer, format="PNG")
    for s in range(num_shards):
        with wds.TarWriter(str(folder / f"part-{s:06d}.tar")) as sink:
            for i in range(PER_SHARD):
                sink.write({"__key__": f"s{s:03d}_{i}", "png": buffer.getvalue(), "txt": f"{s}-{i}"})
    return str(folder / f"part-{{000000..{num_shards - 1:06d}}}.tar")


@pytest.mark.parametrize("num_shards,world_size,num_workers", [(8, 2, 2), (10, 2, 3)])
def test_every_sample_is_read_once_per_pass_across_ranks_and_workers(tmp_path, num_shards, world_size, num_workers):
    urls = write_id_shards(tmp_path / "shards", num_shards)
    source = WebDatasetConfig(urls=urls, image_size=1, channels=1, num_workers=num_workers, shuffle_buffer=4).build()
    per_rank = num_shards // world_size * PER_SHARD  # equal shards per rank: a pass is this many samples per rank
    batch = PER_SHARD
    passes = 2
    reads: list[list[Counter]] = [[Counter() for _ in range(world_size)] for _ in range(passes)]
    for rank in range(world_size):
        stream = source.train_batches(batch, seed=3, rank=rank, world_size=world_size)
        ids = [c for b in itertools.islice(stream, passes * per_rank // batch) for c in b.caption]
        for p in range(passes):
            reads[p][rank].update(ids[p * per_rank:(p + 1) * per_rank])
    everything = Counter(f"{s}-{i}" for s in range(num_shards) for i in range(PER_SHARD))
    for p in range(passes):
        assert sum(reads[p], Counter()) == everything, f"pass {p}: a sample missing or read twice"
        shards_of = [{key.split("-")[0] for key in reads[p][r]} for r in range(world_size)]
        assert all(len(s) == num_shards // world_size for s in shards_of)  # whole shards, split evenly
        assert not set.intersection(*shards_of)  # no shard on two ranks
    assert [set(r) for r in reads[0]] != [set(r) for r in reads[1]]  # the shard assignment is reshuffled per pass
    assert source.skipped == 0
