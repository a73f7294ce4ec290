"""``conv``: a small convolutional VAE trained in the framework (``ntm autoencoder train``).

Encoder: a 3x3 stem, then per downsampling level ``blocks`` residual blocks and a
stride-2 convolution (width ``width * 2**min(level, 2)``), a middle residual
block and a 3x3 head giving the posterior mean and log-variance of
``latent_channels`` channels. The decoder mirrors it with nearest-neighbour
upsampling. GroupNorm and SiLU throughout.

**Regularisation: KL, weighted lightly.** Training minimises
``mse(decode(z), x) + kl_weight * KL(q(z | x) || N(0, I))`` with
``z ~ q(z | x)`` reparameterised, both terms as means per element. The KL term
keeps the latent space bounded and smooth, and the posterior noise makes the
decoder tolerate small errors in the latents it is given, which is what a
generative model's samples are; a small weight (1e-4 by default) keeps the
reconstruction sharp. Encoding for the NTM is the posterior *mean*, so a data
set's latents are a deterministic function of the weights (cached shards equal
on-the-fly encoding).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.autoencoders.base import AUTOENCODERS, Autoencoder, AutoencoderConfig, AutoencoderError

LOGVAR_RANGE = (-30.0, 20.0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvAutoencoderConfig(AutoencoderConfig):
    downsample: Literal[2, 4, 8] = 4
    """Spatial downsampling factor f: latents are (latent_channels, H/f, W/f)."""
    latent_channels: int = pydantic.Field(4, ge=1)
    """Channels of the latent."""
    width: int = pydantic.Field(64, ge=8)
    """Channels at full resolution (doubled at the first two downsamplings)."""
    blocks: int = pydantic.Field(1, ge=0)
    """Residual blocks per resolution level."""
    kl_weight: float = pydantic.Field(1e-4, ge=0)
    """Weight of the KL term (per latent element) against the reconstruction MSE (per pixel)."""
    weights: str | None = None
    """Trained weights: an autoencoder run directory (its autoencoder.pt) or the file itself. None: random init,
    what `ntm autoencoder train` starts from; a model trained on latents needs weights."""

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the module's shapes (what a weights file must agree with)."""
        return self.model_dump(include={"downsample", "latent_channels", "width", "blocks"})

    def trainable(self) -> bool:
        return True

    def untrained(self) -> bool:
        return self.weights is None

    def build(self, image_shape: tuple[int, ...]) -> "ConvAutoencoder":
        if len(image_shape) != 3:
            raise AutoencoderError(f"autoencoder:conv takes images (C, H, W), got data of shape {tuple(image_shape)}")
        model = ConvAutoencoder(self, image_shape[0])
        model.latent_shape(tuple(image_shape))  # images of the wrong size: one clear line now
        if self.weights is not None:
            from ntm.autoencoders.files import load_into

            load_into(model, self, self.weights)
        return model


@AUTOENCODERS.register("conv", ConvAutoencoderConfig)
class ConvAutoencoder(Autoencoder):
    def __init__(self, config: ConvAutoencoderConfig, image_channels: int) -> None:
        super().__init__(image_channels, config.latent_channels, config.downsample)
        self.config = config
        levels = int(math.log2(config.downsample))
        widths = [config.width * 2 ** min(i, 2) for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
        for i in range(levels):
            enc += [_ResBlock(widths[i]) for _ in range(config.blocks)]
            enc.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        enc += [_ResBlock(widths[-1]), _norm(widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1), _ResBlock(widths[-1])]
        for i in reversed(range(levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
            dec += [_ResBlock(widths[i]) for _ in range(config.blocks)]
        dec += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], image_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, logvar)`` of ``q(z | x)``, each ``(B, c, H/f, W/f)``."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode_raw(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode_raw(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, cond: Any = None, objective: Any = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training entry point (the loop's ``model(x, cond, objective, generator)``): ``(loss, metrics)``.

        The objective is the module's own (see the module docstring); ``cond`` and ``objective`` are ignored.
        """
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        mse = F.mse_loss(self.decode_raw(z).float(), x.float())
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
        loss = mse + self.config.kl_weight * kl
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-12))  # images span [-1, 1]: peak-to-peak 2
        return loss, {"mse": mse.detach(), "kl": kl.detach(), "psnr": psnr}


__all__ = ["ConvAutoencoder", "ConvAutoencoderConfig"]
