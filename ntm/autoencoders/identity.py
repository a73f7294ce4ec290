"""``identity``: no autoencoder; the model runs on pixels (the path every run took before the slot existed)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ntm.autoencoders.base import AUTOENCODERS, Autoencoder, AutoencoderConfig


class IdentityAutoencoderConfig(AutoencoderConfig):
    """Pixels in, pixels out: the data source is used as it is."""

    is_identity: ClassVar[bool] = True

    def build(self, image_shape: tuple[int, ...]) -> "IdentityAutoencoder":
        channels = image_shape[0] if len(image_shape) == 3 else 1
        return IdentityAutoencoder(channels, channels, 1)


@AUTOENCODERS.register("identity", IdentityAutoencoderConfig)
class IdentityAutoencoder(Autoencoder):
    def encode_raw(self, x: Tensor) -> Tensor:
        return x

    def decode_raw(self, z: Tensor) -> Tensor:
        return z


__all__ = ["IdentityAutoencoder", "IdentityAutoencoderConfig"]
