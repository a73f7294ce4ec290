import pytest
import torch

from ntm.eval.timing import RssPeak, measure, rss_bytes

BIG = 50_000_000  # float32 elements: 200 MB




def _allocate_and_touch():
    t = torch.ones(BIG)  # ones() writes every page, so they are resident
    return float(t[::4096].sum())


def test_wall_time_is_positive_and_per_sample_is_the_median_over_n():
    calls = []
    out = measure(lambda: calls.append(sum(range(1000))), repeats=3, warmup=2, n=8)
    assert len(calls) == 5  # warmup + repeats
    assert out["wall_ms"] > 0
    assert out["wall_ms_per_sample"] == pytest.approx(out["wall_ms"] / 8, rel=1e-12)
    assert out["repeats"] == 3
    assert "wall_ms_per_sample" not in measure(lambda: None, repeats=1, warmup=0)


@pytest.mark.skipif(rss_bytes() is None, reason="needs /proc/self/statm (Linux)")
def test_peak_memory_of_a_big_allocation_exceeds_a_no_op():
    noop = measure(lambda: None, repeats=2, warmup=0)["peak_mem_mb"]
    big = measure(_allocate_and_touch, repeats=2, warmup=0)["peak_mem_mb"]
    assert noop is not None and big is not None
    assert noop < 20
    assert big > 150  # ~190.7 MiB; slack for a sample missed at the edges
    assert big > noop + 100


@pytest.mark.skipif(rss_bytes() is None, reason="needs /proc/self/statm (Linux)")
def test_rss_peak_sees_a_buffer_freed_before_the_block_ends():
    with RssPeak() as mem:
        _allocate_and_touch()  # the tensor is gone when the block exits
    assert mem.peak_growth is not None and mem.peak_growth > 100 * 2**20


def test_memory_tracking_can_be_switched_off():
    assert measure(lambda: None, repeats=1, warmup=0, track_memory=False)["peak_mem_mb"] is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure(lambda: None, repeats=1, warmup=-1)
    with pytest.raises(ValueError, match="n must be"):
        measure(lambda: None, repeats=1, n=0)
    with pytest.raises(TypeError, match="callable"):
        measure(42, repeats=1)
    with pytest.raises(ValueError, match="device"):
        measure(lambda: None, repeats=1, device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        measure(lambda: None, repeats=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_counts_the_allocation():
    def alloc():
        return torch.ones(BIG // 2, device="cuda").sum()

    out = measure(alloc, repeats=2, warmup=1, device="cuda")
    assert out["wall_ms"] > 0 and out["peak_mem_mb"] > 90
