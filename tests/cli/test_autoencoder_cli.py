"""``ntm autoencoder train`` end to end, a latent NTM on its autoencoder (train, sample, eval), and bad input:
one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ntm.experiments.autoencoder import evaluate
from ntm.experiments.cli import main
from ntm.autoencoders import ConvAutoencoderConfig, load_autoencoder, save_autoencoder
from ntm.data import DigitsConfig
from ntm.data.shapes import ShapesConfig
from ntm.train.checkpoint import CheckpointManager

AE_TINY = ["--autoencoder.width", "8", "--autoencoder.latent-channels", "4", "--train.warmup-steps", "0",
           "--train.log-every", "1"]
"""digits-ae at width 8 with 4 latent channels (pinned: the tests below count on 4 x 4x4 latents)."""
NTM_TINY = ["--train.steps", "3", "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "64",
            "--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "32",
            "--predictor.depth", "2"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def refused(args: list[str], capsys, *must: str) -> str:
    """Run ``args``, expecting exit status 2 and one stderr line holding every string of ``must``."""
    rc, _, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    for text in must:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def heldout_digits() -> torch.Tensor:
    return torch.cat([b.x for b in DigitsConfig().build().eval_batches(256, max_examples=360)])


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """``ntm autoencoder train digits-ae`` at 30 steps and width 8."""
    run_dir = tmp_path_factory.mktemp("ae") / "digits-ae"
    assert main(["autoencoder", "train", "digits-ae", "--train.steps", "30", *AE_TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def latent_run(ae_run, tmp_path_factory) -> Path:
    """``ntm train digits-latent-ntm`` on ``ae_run``'s latents, tiny."""
    run_dir = tmp_path_factory.mktemp("latent") / "digits-latent-ntm"
    assert main(["train", "digits-latent-ntm", "--autoencoder.path", str(ae_run), "--run-dir", str(run_dir),
                 *NTM_TINY]) == 0
    return run_dir


@pytest.fixture(scope="module")
def shapes_ae(tmp_path_factory) -> Path:
    """A tiny x2 autoencoder for 3-channel 16x16 shapes (random weights, fitted statistics)."""
    config = ConvAutoencoderConfig(downsample=2, latent_channels=4, width=8, blocks=0)
    torch.manual_seed(0)
    model = config.build((3, 16, 16))
    batches = ShapesConfig(image_size=16).build().train_batches(64, seed=0)
    model.fit_latent_stats((b.x for b in batches), max_examples=64)
    return save_autoencoder(tmp_path_factory.mktemp("shapes-ae") / "autoencoder.pt", model, config, (3, 16, 16))


# -- ntm autoencoder train ---------------------------------------------------------------------------------------
def test_autoencoder_train_writes_a_complete_run(ae_run):
    for name in ("config.json", "metrics.jsonl", "data_stats.json", "autoencoder.pt", "final.json",
                 "samples/reconstructions.png"):
        assert (ae_run / name).is_file(), name
    assert CheckpointManager(ae_run / "checkpoints").steps() == [30]
    config = json.loads((ae_run / "config.json").read_text())
    assert config["autoencoder"]["width"] == 8 and config["train"]["steps"] == 30 and config["name"] == "digits-ae"

    final = json.loads((ae_run / "final.json").read_text())
    assert final["steps"] == 30 and final["latent_shape"] == [4, 4, 4] and final["image_shape"] == [1, 8, 8]
    assert len(final["latent_stats"]["shift"]) == len(final["latent_stats"]["scale"]) == 4
    assert all(s > 0 for s in final["latent_stats"]["scale"]) and final["kl_per_latent_dim"] >= 0
    # the file holds what was scored: its fingerprint and its held-out PSNR
    model, config = load_autoencoder(ae_run)
    assert model.fingerprint() == final["fingerprint"] and bool(model.stats_fitted)
    assert model.latent_shift.tolist() == pytest.approx(final["latent_stats"]["shift"], abs=1e-6)
    images = heldout_digits()
    scored = evaluate(model.eval(), images)
    assert scored["psnr"] == pytest.approx(final["psnr"], abs=1e-3)
    assert scored["cycle_psnr"] == pytest.approx(final["cycle_psnr"], abs=1e-3)
    # 30 steps learned something: better than the same architecture untrained
    torch.manual_seed(0)
    untrained = config.build((1, 8, 8)).eval()
    untrained.fit_latent_stats([images])
    assert final["psnr"] > evaluate(untrained, images)["psnr"] + 1.0

    from PIL import Image

    cell = 8 * 8 + 1  # 8x8 digits upscaled 8x, 1 px padding; 8 columns, 4 rows of originals over reconstructions
    assert Image.open(ae_run / "samples" / "reconstructions.png").size == (8 * cell + 1, 8 * cell + 1)


def test_resume_continues_from_the_checkpoint_to_more_steps(ae_run, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(ae_run, resumed)
    before = json.loads((ae_run / "final.json").read_text())
    rc, out, err = run(["autoencoder", "train", "digits-ae", "--train.steps", "40", *AE_TINY, "--run-dir", resumed,
                        "--resume"], capsys)
    assert rc == 0, err
    assert f"resumed from {resumed / 'checkpoints' / 'step_00000030'} at step 30" in out
    assert CheckpointManager(resumed / "checkpoints").steps() == [30, 40]
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
             if "step_loss" in json.loads(line)]
    assert sorted(set(steps)) == list(range(1, 41))
    final = json.loads((resumed / "final.json").read_text())
    assert final["steps"] == 40 and final["fingerprint"] != before["fingerprint"]
    assert load_autoencoder(resumed)[0].fingerprint() == final["fingerprint"]
    # resuming with another architecture is refused, naming the field
    line = refused(["autoencoder", "train", "digits-ae", "--train.steps", "50", *AE_TINY, "--autoencoder.width", "16",
                    "--run-dir", resumed, "--resume"], capsys, "autoencoder.width")
    assert CheckpointManager(resumed / "checkpoints").steps() == [30, 40], line


# -- a latent NTM on it -----------------------------------------------------------------------------------------
def test_a_latent_ntm_trains_samples_decoded_digits_and_evaluates(ae_run, latent_run, tmp_path, capsys):
    final = json.loads((latent_run / "final.json").read_text())
    assert final["nll_space"] == "latent" and final["nll_dims"] == 4 * 4 * 4 and final["steps"] == 3
    assert np.isfinite(final["nll_traj_bpd"])
    fingerprint = json.loads((ae_run / "final.json").read_text())["fingerprint"]
    assert json.loads((latent_run / "data_stats.json").read_text())["autoencoder"] == fingerprint

    out = tmp_path / "s.png"
    rc, _, err = run(["sample", "--run", latent_run, "--out", out], capsys)
    assert rc == 0, err
    latents = torch.from_numpy(np.load(out.with_suffix(".npy")))
    assert latents.shape == (100, 4, 4, 4)  # the samples are latents ...
    from PIL import Image

    png = np.asarray(Image.open(out), dtype=np.float64) / 255
    cell = 8 * 8 + 1  # ... the figure shows them decoded: 8x8 grey digits, 10 x 10, a blank row and a real row
    assert png.shape == (12 * cell + 1, 10 * cell + 1)
    model, _ = load_autoencoder(ae_run)
    with torch.no_grad():
        pixels = ((model.decode(latents[:10]).clamp(-1, 1) + 1) / 2).double()
    for i in range(10):
        shown = png[1:65, 1 + i * cell: 1 + i * cell + 64]
        expected = pixels[i, 0].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
        assert np.abs(shown - expected).max() <= 1 / 255 + 1e-6, i

    rc, _, err = run(["eval", "--run", latent_run, "--num-examples", "32"], capsys)
    assert rc == 0, err
    assert json.loads((latent_run / "eval.json").read_text())["4"]["examples"] == 32


def test_a_run_whose_autoencoder_was_replaced_is_refused_naming_both_fingerprints(ae_run, tmp_path, capsys):
    ae = tmp_path / "ae"
    shutil.copytree(ae_run, ae)
    run_dir = tmp_path / "run"
    rc, _, err = run(["train", "digits-latent-ntm", "--autoencoder.path", ae, "--run-dir", run_dir, *NTM_TINY], capsys)
    assert rc == 0, err
    model, config = load_autoencoder(ae)
    recorded = model.fingerprint()
    model.latent_scale.mul_(1.01)  # another autoencoder: here the same weights, other latent statistics
    save_autoencoder(ae / "autoencoder.pt", model, config, (1, 8, 8))
    for command in ("sample", "eval"):
        refused([command, "--run", run_dir], capsys, recorded, model.fingerprint())
    assert not (run_dir / "samples" / "sample.png").exists() and not (run_dir / "eval.json").exists()


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("latent-channels", "8"), ("downsample", "4")])
def test_conv_weights_of_another_architecture(ae_run, tmp_path, capsys, field, value):
    flags = {"latent-channels": "4", "downsample": "2", "width": "8", "blocks": "0", field: value}
    args = ["train", "digits-ntm", "autoencoder:conv", "--autoencoder.weights", ae_run,
            *[a for k, v in flags.items() for a in (f"--autoencoder.{k}", v)], "--run-dir", tmp_path / "r"]
    line = refused(args, capsys, f"autoencoder.{field.replace('-', '_')} is {value}", ae_run / "autoencoder.pt")
    assert "width" not in line  # only the field that differs
    assert not (tmp_path / "r").exists()


def test_weights_that_do_not_load(latent_run, tmp_path, capsys):
    garbage = tmp_path / "random.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    checkpoint = CheckpointManager(latent_run / "checkpoints").latest_path()
    cases = [(["--autoencoder.path", garbage], garbage),
             (["autoencoder:conv", "--autoencoder.weights", garbage], garbage),
             (["--autoencoder.path", checkpoint], "not an autoencoder file"),
             (["--autoencoder.path", latent_run], "holds no autoencoder.pt"),
             (["--autoencoder.path", tmp_path / "absent"], "absent")]
    for flags, text in cases:
        refused(["train", "digits-latent-ntm", *flags, "--run-dir", tmp_path / "r"], capsys, text)
        assert not (tmp_path / "r").exists()
    refused(["autoencoder", "train", "digits-ae", "--autoencoder.weights", garbage, "--run-dir", tmp_path / "a"],
            capsys, garbage)
    assert not (tmp_path / "a").exists()


def test_images_the_autoencoder_cannot_take(shapes_ae, tmp_path, capsys):
    from PIL import Image

    refused(["train", "digits-latent-ntm", "--autoencoder.path", shapes_ae, "--run-dir", tmp_path / "r"], capsys,
            "3-channel", shapes_ae)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((9, 9, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    odd = ["data:image-folder", "--data.path", folder, "--data.image-size", "9", "--data.channels", "3"]
    refused(["train", "digits-latent-ntm", *odd, "--autoencoder.path", shapes_ae, "--run-dir", tmp_path / "r"],
            capsys, "(3, 9, 9)")
    assert not (tmp_path / "r").exists()
    refused(["autoencoder", "train", "digits-ae", *odd, "--autoencoder.downsample", "4", *AE_TINY,
             "--run-dir", tmp_path / "a"], capsys, "(3, 9, 9)")
    assert not (tmp_path / "a").exists()


def test_conv_without_weights_tells_to_train_one(tmp_path, capsys):
    refused(["train", "digits-ntm", "autoencoder:conv", "--run-dir", tmp_path / "r"], capsys,
            "ntm autoencoder train")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, text", [
    ([], "name an autoencoder preset"),
    (["digits-aee", "--run-dir", "{tmp}"], "did you mean 'digits-ae'"),
    (["digits-ae", "autoencoder:pretrained", "--run-dir", "{tmp}"], "does not train from scratch"),
])
def test_autoencoder_train_without_a_known_preset(args, text, tmp_path, capsys):
    refused(["autoencoder", "train", *[a.format(tmp=tmp_path / "a") for a in args]], capsys, text)
    assert not (tmp_path / "a").exists()


def test_a_patch_that_does_not_divide_the_latents_is_one_line(ae_run, tmp_path, capsys):
    refused(["train", "digits-latent-ntm", "--autoencoder.path", ae_run, "--patch-size", "3", "--run-dir",
             tmp_path / "r"], capsys, "patch_size 3 does not divide the latent size 4x4")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("source", ["image-folder", "webdataset"])
def test_autoencoder_trains_on_image_folders_and_shards(source, tmp_path, capsys):
    from PIL import Image

    from ntm.data.shards import write_shards

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 255 - 20 * i, 7)).save(folder / f"img{i:02d}.png")
    if source == "image-folder":
        data = ["data:image-folder", "--data.path", folder, "--data.image-size", "8"]
    else:
        write_shards(folder, str(tmp_path / "shards" / "s-%02d.tar"), maxcount=6)
        urls = str(tmp_path / "shards" / "s-{00..01}.tar")
        data = ["data:webdataset", "--data.urls", urls, "--data.eval-urls", urls, "--data.image-size", "8"]
    run_dir = tmp_path / "ae"
    rc, out, err = run(["autoencoder", "train", "digits-ae", *data, "--train.steps", "4", "--train.batch-size", "4",
                        *AE_TINY, "--eval.num-examples", "8", "--eval.stats-examples", "8", "--run-dir", run_dir],
                       capsys)
    assert rc == 0, err
    final = json.loads((run_dir / "final.json").read_text())
    assert final["image_shape"] == [3, 8, 8] and final["latent_shape"] == [4, 4, 4]
    assert (run_dir / "autoencoder.pt").is_file()
