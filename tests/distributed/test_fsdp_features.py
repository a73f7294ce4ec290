"""FSDP2 in full: meta-device init, activation checkpointing, bf16 parameters, HSDP meshes, sharded sampling.

One ``torchrun --nproc_per_node 2`` launch (gloo, CPU) of ``fsdp_worker.py`` checks everything that needs two
ranks at once (its docstring lists the checks) and reports to a JSON file; the tests here prepare its inputs (a
tiny one-process run and its ``ntm sample`` output), assert on the report, and check the one-process refusals
(a mesh that does not fit the world, FSDP-only settings under DDP).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch.distributed as dist

from ntm.experiments.cli import main
from ntm.train.config import TrainConfig
from tests.distributed.torchrun_launch import torchrun

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is required"),
    pytest.mark.slow,  # torchrun launches of two ranks (-m slow); test_parallel.py keeps one in the fast tier
]

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 240
TINY = [
    "--train.steps", "2", "--train.batch-size", "32", "--train.warmup-steps", "0", "--train.log-every", "1",
    "--train.checkpoint-every", "2", "--train.sample-every", "0", "--train.device", "cpu",
    "--eval.num-examples", "16", "--eval.num-points", "16",
    "--transporter.width", "16", "--transporter.num-heads", "2", "--transporter.num-blocks", "2",
    "--transporter.layers-per-block", "1", "--predictor.width", "16", "--predictor.depth", "2",
    "--predictor.num-heads", "2",
]
"""The run the worker's training loop repeats on two ranks (``fsdp_worker.loop_check``): same model and batch."""


def _cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The worker's report, plus the one-process run and sample it is compared with."""
    tmp = tmp_path_factory.mktemp("fsdp")
    ref, odd, out = tmp / "ref", tmp / "odd", tmp / "out"
    out.mkdir()
    rc, err = _cli("train", "toy-ntm", "--run-dir", str(ref), *TINY, "--train.grad-accum", "2")
    assert rc == 0, err[-3000:]
    rc, err = _cli("sample", "--run", str(ref), "--out", str(out / "sample1.png"))
    assert rc == 0, err[-3000:]
    shutil.copytree(ref, odd)  # the same run asked for 63 samples: they do not split over 2 ranks
    config = json.loads((odd / "config.json").read_text())
    config["eval"]["num_points"] = 63
    (odd / "config.json").write_text(json.dumps(config))
    rc, log = torchrun([str(HERE / "fsdp_worker.py"), str(tmp / "report.json"), str(tmp / "toy"), str(odd), str(ref),
                        str(out)], tmp / "log.txt", timeout_s=TIMEOUT_S, what="fsdp_worker.py")
    assert rc == 0, log[-6000:]
    return {"report": json.loads((tmp / "report.json").read_text()), "ref": ref, "toy": tmp / "toy", "out": out,
            "odd": odd}


def test_meta_init_equals_the_eager_build_on_every_mesh(two_ranks: dict) -> None:
    report = two_ranks["report"]["meta_init"]
    for mesh in ("flat", "hsdp-2x1", "hsdp-1x2"):
        assert report[f"{mesh}-names"], mesh
        assert report[mesh] == [], f"{mesh}: tensors differing from the eager build: {report[mesh]}"


def test_activation_checkpointing_mixed_precision_and_hsdp_keep_the_numbers(two_ranks: dict) -> None:
    report = two_ranks["report"]["step"]
    for mode in ("full", "selective"):  # recomputation repeats the same float operations: bitwise on CPU
        assert report[f"ac-{mode}"] == {"loss_equal": True, "grads_equal": True}, mode
    assert 0 < report["bf16_rel"] <= two_ranks["report"]["mp_tolerance"], report["bf16_rel"]
    for mesh in ("hsdp-2x1", "hsdp-1x2"):
        assert report[mesh]["loss_rel"] <= 1e-6 and report[mesh]["grad_err"] <= 1e-5, (mesh, report[mesh])


def test_sharded_sampling_and_nll_equal_one_process(two_ranks: dict) -> None:
    for name, got in two_ranks["report"]["sampling"].items():
        # the same noise per row; rows computed in batches of another size may round differently
        assert got["sample_err"] <= 1e-6 * max(1.0, got["sample_scale"]), (name, got)
        assert got["nll_rel"] <= 1e-6 and got["bound_rel"] <= 1e-6, (name, got)


def test_the_loop_with_meta_init_checkpointing_and_hsdp_matches_one_process(two_ranks: dict) -> None:
    def losses(run: Path) -> list[tuple[float, float]]:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(m["step_loss"], m["grad_norm"]) for m in lines]

    want, got = losses(two_ranks["ref"]), losses(two_ranks["toy"])
    assert len(got) == len(want) == 2
    for (a, ga), (b, gb) in zip(want, got):
        assert b == pytest.approx(a, rel=1e-5) and gb == pytest.approx(ga, rel=1e-5)
    assert (two_ranks["toy"] / "samples" / "step_00000002.png").is_file(), "no sharded preview written"


def test_ntm_sample_on_two_ranks(two_ranks: dict) -> None:
    report, out = two_ranks["report"], two_ranks["out"]
    odd = report["odd"]
    assert odd["rc"] == 2 and odd["written"] == []
    assert odd["stderr"].splitlines() == [
        "ntm sample: error: the sample batch of 63 does not split evenly over 2 ranks; use a multiple of 2"
    ]
    assert report["ok"]["rc"] == 0, report["ok"]["stderr"]
    one, two = np.load(out / "sample1.npy"), np.load(out / "sample2.npy")
    assert one.shape == two.shape == (16, 2)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)


def test_a_mesh_that_does_not_fit_the_world_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rc, err = _cli("train", "toy-ntm", "--run-dir", str(run_dir), *TINY, "--train.mesh", "2", "1")
    assert rc == 2
    assert err.splitlines() == ["ntm train: error: train.mesh 2 x 1 (replicate x shard) is 2 ranks, but the world "
                                "size is 1"]
    assert not run_dir.exists()


@pytest.mark.parametrize("fields", [{"mixed_precision": "bf16"}, {"mesh": (1, 2)}])
def test_fsdp_only_settings_are_refused_under_ddp(fields: dict) -> None:
    with pytest.raises(pydantic.ValidationError, match="need parallel fsdp"):
        TrainConfig(parallel="ddp", **fields)
    with pytest.raises(pydantic.ValidationError, match="rank counts >= 1"):
        TrainConfig(mesh=(0, 2))
