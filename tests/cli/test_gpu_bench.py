"""``ntm bench gpu``: its CPU smoke run writes every part; without CUDA it stops at once in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ntm.experiments.cli import main


def test_tiny_cpu_run_measures_every_part(tmp_path, capsys):
    out = tmp_path / "gb"
    assert main(["bench", "gpu", "--out", str(out), "--tiny", "--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "1",
                 "--sample-batch", "2"]) == 0
    r = json.loads((out / "gpu_bench.json").read_text())
    assert r["preset"] == "imagenet-paper" and r["tokens"] == 16 and r["steps_K"] == [4]
    formula, counted = r["train_flops_per_example"]["total"], r["train_flops_counted_per_example"]
    assert 0.8 < formula / counted < 1.25  # the analytic count against torch's flop counter
    assert [t["setting"] for t in r["train"]] == ["bf16", "bf16 + checkpointing"]  # compile: CUDA only by default
    for t in r["train"]:
        assert t["loss_finite"] and t["examples_per_s"] > 0 and t["mfu"] is None and t["peak_memory_gib"] is None
        assert t["tokens_per_s"] == pytest.approx(16 * t["examples_per_s"])
        assert t["model_tflops_per_s"] == pytest.approx(formula * t["examples_per_s"] / 1e12)
    nll = r["nll"]
    assert len(nll["fp32_bpd"]) == 4 and all(math.isfinite(v) for v in nll["fp32_bpd"] + nll["bf16_bpd"])
    assert [s["model"] for s in r["sampling"]] == ["ntm-K4 (decoded)", "ntm-K4 (u-space, no decoding)",
                                                   "flow-matching-euler50"]
    assert all(s["latency_ms"] > 0 and s["samples_per_s"] > 0 for s in r["sampling"])
    assert r["sampling"][-1]["latency_vs_fm"] == pytest.approx(1.0)
    md = (out / "gpu_bench.md").read_text()
    assert "## Training step" in md and "## bf16 vs fp32 NLL" in md and "flow-matching-euler50" in md
    assert "## Sampling" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_fails_fast_in_one_line(tmp_path, capsys):
    assert main(["bench", "gpu", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntm bench: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
