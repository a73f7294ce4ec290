"""``pretrained``: a trained autoencoder from a local file, architecture and latent statistics included.

The file is ``autoencoder.pt`` as ``ntm autoencoder train`` writes it (:mod:`ntm.autoencoders.files`): it names
the registered variant (``conv``: the architecture documented in :mod:`ntm.autoencoders.conv`) and its config,
so ``--autoencoder.path`` is all a run needs. An outside autoencoder (e.g. a diffusers ``AutoencoderKL``) is one
small :class:`Autoencoder` subclass with a config of its own (docs/latent.md): it implements ``encode_raw`` and
``decode_raw`` around the loaded module, and its latent statistics are fitted on the run's training data when
the weights bring none.
"""

from __future__ import annotations

from ntm.autoencoders.base import AUTOENCODERS, Autoencoder, AutoencoderConfig
from ntm.autoencoders.files import load_autoencoder


class PretrainedAutoencoderConfig(AutoencoderConfig):
    path: str = "runs/shapes-ae"
    """An autoencoder run directory (its autoencoder.pt) or an autoencoder.pt file."""

    def build(self, image_shape: tuple[int, ...]) -> Autoencoder:
        model, _ = load_autoencoder(self.path, tuple(image_shape))
        model.latent_shape(tuple(image_shape))
        return model


# build() returns the file's own variant (e.g. a ConvAutoencoder): the entry's class is the interface itself
AUTOENCODERS.register("pretrained", PretrainedAutoencoderConfig)(Autoencoder)

__all__ = ["PretrainedAutoencoderConfig"]
