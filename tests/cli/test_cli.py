"""The ``ntm`` command end to end: presets, reproduction, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ntm.experiments.autoencoder import AE_PRESETS
from ntm.experiments.cli import main
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.autoencoders import ConvAutoencoderConfig, save_autoencoder
from ntm.train.checkpoint import CheckpointManager, load_checkpoint

QUICK = ["--train.warmup-steps", "0", "--train.log-every", "1", "--eval.num-examples", "128"]
GPU_PRESETS = ("imagenet-paper", "imagenet64-pixels", "t2i-paper")
"""Presets sized for a GPU and ImageNet-scale shards: tested at reduced width on tiny shards below."""


def tiny_autoencoder(path: Path, config: ConvAutoencoderConfig, image_shape: tuple[int, int, int], data) -> Path:
    """A width-8 ``config`` (random weights, latent statistics fitted on ``data``) saved to ``path``/autoencoder.pt."""
    config = config.replace(width=8, blocks=0)
    torch.manual_seed(0)
    model = config.build(image_shape)
    model.fit_latent_stats((b.x for b in data.train_batches(64, seed=0)), max_examples=128)
    save_autoencoder(path / "autoencoder.pt", model, config, image_shape)
    return path


@pytest.fixture(scope="module")
def preset_autoencoders(tmp_path_factory) -> dict[str, Path]:
    """For each latent preset: a tiny autoencoder shaped like the one its autoencoder.path names (e.g. runs/digits-ae
    -> the digits-ae preset's downsampling and latent channels), for the preset's images."""
    root = tmp_path_factory.mktemp("autoencoders")
    out = {}
    for name, exp in PRESETS.items():
        if exp.autoencoder.is_identity or name in GPU_PRESETS:
            continue
        data = exp.data.build()
        ae = AE_PRESETS[Path(exp.autoencoder.path).name].autoencoder
        out[name] = tiny_autoencoder(root / name, ae, tuple(data.spec.shape), data)
    return out


def small(preset: str) -> list[str]:
    """Flags shrinking a preset's networks for fast tests (whatever width/depth fields its components have)."""
    model = PRESETS[preset].model
    flags = []
    for prefix, cfg in (("predictor", model.predictor), ("predictor.xhat", getattr(model.predictor, "xhat", None)),
                        ("transporter", model.transporter)):
        fields = type(cfg).model_fields if cfg is not None else {}
        flags += [f"--{prefix}.width", "16" if prefix == "transporter" else "32"] if "width" in fields else []
        flags += [f"--{prefix}.depth", "2"] if "depth" in fields else []
        flags += [f"--{prefix}.num-heads", "2"] if prefix == "transporter" and "num_heads" in fields else []
    return flags


def run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def losses(run_dir: Path) -> dict[int, float]:
    """step -> step_loss, the last record of each step winning (a resumed run repeats some)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["step_loss"]
    return out


FAST_PRESETS = ("toy-ntm", "digits-ntm", "shapes-t2i-ntm", "digits-latent-ntm")
"""The presets trained in the fast tier; every other one runs in the slow tier (``-m slow``)."""


@pytest.mark.parametrize("preset", [p if p in FAST_PRESETS else pytest.param(p, marks=pytest.mark.slow)
                                    for p in PRESETS if p not in GPU_PRESETS])
def test_every_preset_trains_through_the_cli(preset, tmp_path, capsys, preset_autoencoders):
    run_dir = tmp_path / preset
    latent = ["--autoencoder.path", str(preset_autoencoders[preset])] if preset in preset_autoencoders else []
    args = ["train", preset, "--run-dir", str(run_dir), "--train.steps", "3", "--train.sample-every", "2", *QUICK,
            *small(preset), *latent]
    rc, out, err = run(args, capsys)
    assert rc == 0, err
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 3 and torch.isfinite(torch.tensor(final["nll_traj_bpd"]))
    assert final["nll_space"] == ("latent" if latent else "pixels")
    assert "held-out K=4: nll_traj_bpd" in out
    for name in ("config.json", "data_stats.json", "metrics.jsonl", "samples/final.png", "samples/final.npy",
                 "samples/step_00000002.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(losses(run_dir)) == [1, 2, 3]
    assert CheckpointManager(run_dir / "checkpoints").steps() == [3]
    assert (run_dir / "tb").is_dir()
    # config.json holds the complete experiment
    saved = Experiment.model_validate(json.loads((run_dir / "config.json").read_text()))
    assert saved.name == preset and saved.train.steps == 3


def test_digits_grid_has_one_row_per_digit(tmp_path, capsys):
    run_dir = tmp_path / "d"
    rc, _, err = run(["train", "digits-ntm", "--run-dir", str(run_dir), "--train.steps", "2", "--train.sample-every", "0",
                      *QUICK, *small("digits-ntm")], capsys)
    assert rc == 0, err
    import numpy as np

    labels = np.load(run_dir / "samples" / "final_labels.npy")
    samples = np.load(run_dir / "samples" / "final.npy")
    assert samples.shape == (100, 1, 8, 8)
    assert (labels.reshape(10, 10) == np.arange(10)[:, None]).all()
    # the figure: 10 rows of samples, a blank row, then a row of real held-out digits 0..9
    from PIL import Image

    cell = 8 * 8 + 1  # 8x8 digits upscaled 8x, 1 px padding
    assert Image.open(run_dir / "samples" / "final.png").size == (10 * cell + 1, 12 * cell + 1)


def test_config_file_reproduces_the_run(tmp_path, capsys):
    first = tmp_path / "first"
    rc, _, err = run(["train", "toy-ntm", "--run-dir", str(first), "--train.steps", "4", "--train.sample-every", "0",
                      *QUICK, *small("toy-ntm")], capsys)
    assert rc == 0, err
    second = tmp_path / "second"
    rc, _, err = run(["train", "--config", str(first / "config.json"), "--run-dir", str(second)], capsys)
    assert rc == 0, err
    assert losses(first) == losses(second)
    # without --run-dir the reproduction goes to a new run directory of its own, printed
    rc, out, err = run(["train", "--config", str(first / "config.json")], capsys)
    assert rc == 0, err
    third = Path(f"{first}-repro")
    assert f"reproducing {first / 'config.json'} into {third}" in out
    assert losses(first) == losses(third)
    assert CheckpointManager(first / "checkpoints").steps() == [4]  # the original run is untouched


def test_sample_and_eval_commands(tmp_path, capsys):
    run_dir = tmp_path / "r"
    rc, _, err = run(["train", "digits-ntm", "--run-dir", str(run_dir), "--train.steps", "2", "--train.sample-every", "0",
                      *QUICK, *small("digits-ntm")], capsys)
    assert rc == 0, err
    rc, out, err = run(["sample", "--run", str(run_dir), "--guidance", "2.0", "--temperature", "0.8", "--steps", "4",
                        "--out", str(tmp_path / "g.png")], capsys)
    assert rc == 0, err
    assert (tmp_path / "g.png").is_file() and (tmp_path / "g.npy").is_file()
    rc, out, err = run(["eval", "--run", str(run_dir), "--num-examples", "64"], capsys)
    assert rc == 0, err
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["4"]["examples"] == 64


@pytest.fixture(scope="module")
def imagenet_like_shards(tmp_path_factory) -> str:
    """Two shards of 8 random 64x64 RGB images in 2 classes; their brace pattern."""
    from PIL import Image

    from ntm.data.shards import write_shards

    root = tmp_path_factory.mktemp("imagenet-like")
    folder = root / "images"
    gen = torch.Generator().manual_seed(0)
    for cls in ("n01", "n02"):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            arr = torch.randint(0, 256, (64, 64, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(folder / cls / f"{i}.png")
    write_shards(folder, str(root / "shards" / "train-%06d.tar"), maxcount=4)
    return str(root / "shards" / "train-{000000..000001}.tar")


@pytest.mark.parametrize("preset", ["imagenet64-pixels", "imagenet-paper"])
def test_the_paper_presets_build_and_run_one_step_at_reduced_width(preset, imagenet_like_shards, tmp_path, capsys):
    """imagenet64-pixels on its 64x64 pixels; imagenet-paper (latent) on 32x32 images through a tiny autoencoder
    shaped like imagenet-ae (x8, 32 latent channels): 4x4 latents, patch 2."""
    urls = imagenet_like_shards
    latent = not PRESETS[preset].autoencoder.is_identity
    extra = []
    if latent:
        data = PRESETS[preset].data.replace(urls=urls, image_size=32, num_workers=0)
        ae = tiny_autoencoder(tmp_path / "ae", AE_PRESETS["imagenet-ae"].autoencoder, (3, 32, 32), data.build())
        extra = ["--data.image-size", "32", "--data.num-workers", "0", "--autoencoder.path", str(ae)]
    run_dir = tmp_path / "paper"
    args = [
        "train", preset, "--run-dir", str(run_dir), "--data.urls", urls, "--data.eval-urls", urls,
        "--transporter.width", "32", "--transporter.num-heads", "2", "--predictor.width", "32",
        "--predictor.depth", "2", "--predictor.num-heads", "2", "--train.steps", "1", "--train.batch-size", "4",
        "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "4", "--eval.batch-size", "4",
        "--eval.grid-columns", "1", "denoiser:none", *extra,
    ]
    rc, _, err = run(args, capsys)
    assert rc == 0, err
    saved = json.loads((run_dir / "config.json").read_text())
    # the paper's shape is kept: 2 blocks x 4 layers, a 24-layer... here reduced to depth 2, K = 4, 10% dropout
    model = saved["model"]
    assert model["transporter"]["num_blocks"] == 2 and model["transporter"]["layers_per_block"] == 4
    assert model["process"]["steps"] == [4] and saved["conditioner"]["dropout"] == 0.1
    assert PRESETS[preset].model.predictor.depth == 24
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 1
    if latent:
        assert saved["autoencoder"] == {"name": "pretrained", "path": str(tmp_path / "ae")} and saved["patch_size"] == 2
        assert final["nll_space"] == "latent" and final["nll_dims"] == 32 * 4 * 4
    else:
        assert saved["autoencoder"] == {"name": "identity"} and saved["patch_size"] == 4
        assert final["nll_space"] == "pixels" and final["nll_dims"] == 3 * 64 * 64


def _train_cmd(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ntm.experiments.cli", "train", "toy-ntm", "--run-dir", str(run_dir),
            "--train.steps", str(steps), "--train.checkpoint-every", "5", "--train.sample-every", "0",
            "--train.threads", "1", *QUICK, *small("toy-ntm"), *extra]


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_identical_loss_curve(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, 60), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, 60), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager = CheckpointManager(killed / "checkpoints")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(s >= 10 for s in manager.steps()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before = manager.steps()
    assert steps_before and max(steps_before) < 60, "the run must be killed mid-training"

    done = subprocess.run(_train_cmd(killed, 60, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout
    assert losses(killed) == losses(reference)  # exact, every step
    final_a = load_checkpoint(CheckpointManager(reference / "checkpoints").latest_path())
    final_b = load_checkpoint(manager.latest_path())
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key


def test_shards_command_writes_readable_shards(tmp_path, capsys):
    from PIL import Image

    from ntm.data import WebDatasetConfig

    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(torch.full((8, 8), 40 * i, dtype=torch.uint8).numpy()).save(folder / f"{i}.png")
    rc = main(["shards", "write", "--folder", str(tmp_path / "imgs"), "--out", str(tmp_path / "s" / "train-%06d.tar"),
               "--maxcount", "3"])
    assert rc == 0, capsys.readouterr().err
    shards = sorted((tmp_path / "s").glob("train-*.tar"))
    assert len(shards) == 2
    source = WebDatasetConfig(urls=str(tmp_path / "s" / "train-{000000..000001}.tar"), image_size=8, channels=1,
                              num_classes=1, eval_urls=str(tmp_path / "s" / "train-{000000..000001}.tar")).build()
    seen = torch.cat([b.x for b in source.eval_batches(2)])
    assert seen.shape == (5, 1, 8, 8)


def test_a_config_saved_in_the_older_layout_loads_as_todays():
    """config.json files written before the model's slots moved under "model" still read (sample, eval, --config)."""
    today = PRESETS["digits-ntm"].model_dump(mode="json")
    older = {k: v for k, v in today.items() if k != "model"} | today["model"]
    older["train"] = {**older["train"], "fail_at_step": None}
    assert Experiment.model_validate(older) == PRESETS["digits-ntm"]
