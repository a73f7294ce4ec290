"""The GPU-shaped ``t2i-paper`` preset: its shape, one training step at reduced width on caption shards with a tiny
open_clip config and a tiny autoencoder shaped like imagenet-ae, and one clear line when the text tower's weights
file is missing."""

from __future__ import annotations

import json

import pytest
import torch

from ntm.experiments.autoencoder import AE_PRESETS
from ntm.experiments.cli import main
from ntm.experiments.presets import PRESETS
from ntm.autoencoders import PretrainedAutoencoderConfig, save_autoencoder
from ntm.conditioning import OpenClipTextConfig
from ntm.data.shapes import ShapesConfig
from ntm.data.shards import write_source_shards

open_clip = pytest.importorskip("open_clip")

TINY = "ntm-test-t2i-paper-clip"
REDUCED = ["--transporter.width", "32", "--transporter.num-heads", "2", "--predictor.width", "32",
           "--predictor.depth", "2", "--predictor.num-heads", "2", "--train.steps", "1", "--train.batch-size", "4",
           "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "4",
           "--eval.batch-size", "4", "--eval.grid-columns", "1", "denoiser:none"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Caption shards (png + txt) of the shapes source at 32x32, a tiny open_clip config and a weights file of it,
    and a width-8 autoencoder shaped like imagenet-ae (x8, 32 latent channels: 4x4 latents, patch 2 -> 4 tokens)."""
    root = tmp_path_factory.mktemp("t2i-paper")
    shapes = ShapesConfig(image_size=32, train_size=16, eval_size=8)
    write_source_shards(shapes, str(root / "train-%06d.tar"), 16, maxcount=8)
    ae = AE_PRESETS["imagenet-ae"].autoencoder.replace(width=8, blocks=0)
    torch.manual_seed(0)
    model = ae.build((3, 32, 32))
    model.fit_latent_stats((b.x for b in shapes.build().train_batches(16, seed=0)), max_examples=16)
    save_autoencoder(root / "ae" / "autoencoder.pt", model, ae, (3, 32, 32))
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    vision = {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
    (root / f"{TINY}.json").write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY, pretrained=None).state_dict(), root / "clip.pt")
    return root


def test_the_preset_has_the_papers_shape():
    exp = PRESETS["t2i-paper"]
    assert isinstance(exp.conditioner, OpenClipTextConfig) and exp.conditioner.frozen
    assert exp.conditioner.weights and exp.conditioner.dropout == 0.1
    assert exp.model.transporter.num_blocks == 2 and exp.model.transporter.layers_per_block == 4
    assert exp.model.predictor.depth == 24 and exp.model.process.steps == (4,)
    assert exp.train.precision == "bf16" and exp.data.num_classes == 0 and exp.sampler.guidance > 0
    # imagenet-paper's latent space: 256x256 images through imagenet-ae, patch 2
    assert exp.autoencoder == PRESETS["imagenet-paper"].autoencoder
    assert exp.autoencoder == PretrainedAutoencoderConfig(path="runs/imagenet-ae")
    assert exp.data.image_size == 256 and exp.patch_size == 2


def train(shards, run, weights) -> int:
    """``ntm train t2i-paper`` at reduced width on the caption shards, the tiny open_clip tower from ``weights``, the
    tiny autoencoder."""
    urls = str(shards / "train-{000000..000001}.tar")
    return main(["train", "t2i-paper", "--run-dir", str(run), "--data.urls", urls, "--data.eval-urls", urls,
                 "--data.image-size", "32", "--data.num-workers", "0", "--autoencoder.path", str(shards / "ae"),
                 "--conditioner.model", TINY, "--conditioner.weights", str(weights), *REDUCED])


def test_one_step_at_reduced_width_on_caption_shards(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(shards, run, shards / "clip.pt") == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["transporter"]["layers_per_block"] == 4 and saved["conditioner"]["model"] == TINY
    assert saved["autoencoder"] == {"name": "pretrained", "path": str(shards / "ae")}
    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 1 and final["nll_space"] == "latent" and final["nll_dims"] == 32 * 4 * 4


def test_a_missing_weights_file_is_one_line_and_writes_nothing(shards, tmp_path, capsys):
    run = tmp_path / "run"
    rc = train(shards, run, tmp_path / "absent.pt")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "conditioner.weights" in err[0] and "absent.pt" in err[0], err
    assert not (run / "checkpoints").exists()
