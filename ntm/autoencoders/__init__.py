"""Autoencoders: images <-> latents. Each variant registers in ``AUTOENCODERS``; every variant module is imported
here explicitly."""

from ntm.autoencoders.base import AUTOENCODERS, Autoencoder, AutoencoderConfig, AutoencoderError
from ntm.autoencoders.conv import ConvAutoencoder, ConvAutoencoderConfig
from ntm.autoencoders.files import FILE_NAME, load_autoencoder, save_autoencoder
from ntm.autoencoders.identity import IdentityAutoencoder, IdentityAutoencoderConfig
from ntm.autoencoders.latent import LatentSource
from ntm.autoencoders.pretrained import PretrainedAutoencoderConfig

__all__ = [
    "AUTOENCODERS", "Autoencoder", "AutoencoderConfig", "AutoencoderError", "ConvAutoencoder",
    "ConvAutoencoderConfig", "FILE_NAME", "IdentityAutoencoder", "IdentityAutoencoderConfig", "LatentSource",
    "PretrainedAutoencoderConfig", "load_autoencoder", "save_autoencoder",
]
