"""An autoencoder from outside the framework (a diffusers-like VAE) through a small adapter: registered under a
name of its own, it trains a latent NTM from the command line with its latent statistics fitted on the data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ntm.experiments.cli import main
from ntm.autoencoders import AUTOENCODERS, Autoencoder, AutoencoderConfig, LatentSource
from ntm.data import DigitsConfig

NAME = "test-outside-vae"


class FakeOutsideVAE(nn.Module):
    """Stands in for another library's VAE: ``encode(x).latent_dist.mean``, ``decode(z).sample``, x2 downsampling."""

    def __init__(self, in_channels: int = 1, latent_channels: int = 4) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=in_channels, latent_channels=latent_channels)
        self.down = nn.Conv2d(in_channels, 2 * latent_channels, 2, stride=2)
        self.up = nn.ConvTranspose2d(latent_channels, in_channels, 2, stride=2)

    @classmethod
    def from_pretrained(cls, path: str) -> FakeOutsideVAE:
        module = cls()
        module.load_state_dict(torch.load(path, weights_only=True))
        return module

    def encode(self, x):
        mean, logvar = self.down(x).chunk(2, dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, logvar=logvar))

    def decode(self, z):
        return SimpleNamespace(sample=self.up(z))


# -- the adapter: a config naming the weights, and an Autoencoder around the outside module --------------------------
class OutsideVAEConfig(AutoencoderConfig):
    path: str
    """The outside VAE's weights."""

    def build(self, image_shape: tuple[int, ...]) -> OutsideVAE:
        model = OutsideVAE(FakeOutsideVAE.from_pretrained(self.path))
        model.latent_shape(tuple(image_shape))  # images it cannot take: one clear line
        return model


class OutsideVAE(Autoencoder):
    def __init__(self, vae: FakeOutsideVAE) -> None:
        super().__init__(vae.config.in_channels, vae.config.latent_channels, factor=2)
        self.vae = vae.eval().requires_grad_(False)

    def encode_raw(self, x):
        return self.vae.encode(x).latent_dist.mean

    def decode_raw(self, z):
        return self.vae.decode(z).sample


@pytest.fixture
def registered():
    AUTOENCODERS.register(NAME, OutsideVAEConfig)(OutsideVAE)
    yield
    AUTOENCODERS.unregister(NAME)


TINY = ["--train.steps", "3", "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "64",
        "--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "32",
        "--predictor.depth", "2"]


def test_an_outside_vae_trains_a_latent_ntm_through_the_cli(registered, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "vae.pt"
    torch.save(FakeOutsideVAE().state_dict(), weights)
    run = tmp_path / "run"
    rc = main(["train", "digits-ntm", f"autoencoder:{NAME}", "--autoencoder.path", str(weights), "--run-dir", str(run),
               *TINY])
    assert rc == 0, capsys.readouterr().err
    final = json.loads((run / "final.json").read_text())
    assert final["nll_space"] == "latent" and final["nll_dims"] == 4 * 4 * 4 and final["steps"] == 3
    assert json.loads((run / "config.json").read_text())["autoencoder"] == {"name": NAME, "path": str(weights)}

    # the weights brought no statistics: they were fitted on the digits, and the run recorded that autoencoder
    stats = json.loads((run / "data_stats.json").read_text())
    unfitted = OutsideVAEConfig(path=str(weights)).build((1, 8, 8))
    source = LatentSource(DigitsConfig().build(), OutsideVAEConfig(path=str(weights)).build((1, 8, 8)))
    assert bool(source.autoencoder.stats_fitted) and not bool(unfitted.stats_fitted)
    assert stats["autoencoder"] == source.fingerprint != unfitted.fingerprint()
    assert stats["latent_shape"] == [4, 4, 4] and stats["latent_scale"] != [1.0] * 4
    z = torch.cat([b.x for b in source.eval_batches(256)]).double()
    assert z.mean().abs() < 0.2 and (z.std() - 1).abs() < 0.2  # near unit scale on held-out digits too

    # the run samples as decoded digits
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s.png")]) == 0, capsys.readouterr().err
    assert Path(tmp_path / "s.npy").is_file()
