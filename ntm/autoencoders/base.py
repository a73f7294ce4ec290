"""The autoencoder interface: images ``(B, C, H, W)`` in ``[-1, 1]`` <-> latents at unit scale.

An :class:`Autoencoder` maps images to latents ``(B, c, H/f, W/f)`` and back.
Its own encoder and decoder are :meth:`Autoencoder.encode_raw` (deterministic:
the posterior mean for a variational one) and :meth:`Autoencoder.decode_raw`;
:meth:`Autoencoder.encode` / :meth:`Autoencoder.decode` add the per-channel
latent shift and scale, estimated on training data
(:meth:`Autoencoder.fit_latent_stats`) and kept as buffers, so latents enter
the NTM at zero mean and unit scale per channel and the statistics travel with
the weights. :meth:`Autoencoder.fingerprint` names exactly these weights and
statistics: latent shards and runs record it, and a mismatch is refused.

A variant registers in ``AUTOENCODERS`` with a config whose ``build(image_shape)``
returns the module. An outside VAE is one small subclass implementing
``encode_raw``/``decode_raw`` (docs/latent.md shows one).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import ClassVar, Iterable

import torch
from torch import Tensor, nn

from ntm.registry import ComponentConfig, Registry


class AutoencoderError(ValueError):
    """A wrong autoencoder for the data or the run (shape, weights, fingerprint); the message names the file or field."""


class AutoencoderConfig(ComponentConfig):
    """Base of the autoencoder configs."""

    is_identity: ClassVar[bool] = False
    """True for the pixel path (no autoencoder in the loop)."""

    def build(self, image_shape: tuple[int, int, int]) -> "Autoencoder":  # pragma: no cover - interface
        """The autoencoder for images of ``image_shape`` ``(C, H, W)`` (weights loaded when the config names them)."""
        raise NotImplementedError

    def trainable(self) -> bool:
        """Whether ``ntm autoencoder train`` can train this variant from scratch."""
        return False

    def untrained(self) -> bool:
        """Whether this config builds random weights (fine to train, useless for a model on its latents)."""
        return False


class Autoencoder(nn.Module, ABC):
    """Images in ``[-1, 1]`` <-> unit-scale latents; see the module docstring."""

    factor: int
    """Spatial downsampling (``H / h``)."""
    image_channels: int
    latent_channels: int

    def __init__(self, image_channels: int, latent_channels: int, factor: int) -> None:
        super().__init__()
        self.image_channels, self.latent_channels, self.factor = int(image_channels), int(latent_channels), int(factor)
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))
        self.register_buffer("stats_fitted", torch.zeros((), dtype=torch.bool))

    # -- the variant's own maps ---------------------------------------------------
    @abstractmethod
    def encode_raw(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, c, H/f, W/f)``, deterministic, before shift and scale."""

    @abstractmethod
    def decode_raw(self, z: Tensor) -> Tensor:
        """``(B, c, h, w)`` (before shift and scale) -> ``(B, C, h f, w f)``."""

    # -- shapes -------------------------------------------------------------------
    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(C, H, W)`` -> ``(c, H/f, W/f)``; :class:`AutoencoderError` for images this autoencoder cannot take."""
        if len(image_shape) != 3:
            raise AutoencoderError(f"autoencoder {type(self).__name__} takes images (C, H, W), got data of shape "
                                   f"{tuple(image_shape)}")
        c, h, w = image_shape
        if c != self.image_channels or h % self.factor or w % self.factor:
            raise AutoencoderError(
                f"images of shape {tuple(image_shape)} do not fit autoencoder {type(self).__name__} "
                f"({self.image_channels} channels, sides divisible by {self.factor})")
        return self.latent_channels, h // self.factor, w // self.factor

    # -- unit-scale latents -------------------------------------------------------
    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return self.latent_shift.view(shape).to(z.dtype), self.latent_scale.view(shape).to(z.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Images -> latents at zero mean and unit scale per channel (on the training data)."""
        z = self.encode_raw(x)
        shift, scale = self._stats(z)
        return (z - shift) / scale

    def decode(self, z: Tensor) -> Tensor:
        """Unit-scale latents -> images in (about) ``[-1, 1]``."""
        shift, scale = self._stats(z)
        return self.decode_raw(z * scale + shift)

    @torch.no_grad()
    def fit_latent_stats(self, images: Iterable[Tensor], max_examples: int = 2048) -> dict[str, list[float]]:
        """Per-channel mean and standard deviation of ``encode_raw`` over (up to ``max_examples``) images.

        Float64 running sums over every position of every example; the result is stored in the buffers and
        returned. :class:`AutoencoderError` when no image arrives.
        """
        device = self.latent_shift.device
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        square = torch.zeros_like(total)
        count, seen = 0, 0
        for x in images:
            x = x[: max_examples - seen].to(device)
            z = self.encode_raw(x).double().cpu()
            total += z.sum(dim=(0, 2, 3))
            square += (z * z).sum(dim=(0, 2, 3))
            count += z.shape[0] * z.shape[2] * z.shape[3]
            seen += x.shape[0]
            if seen >= max_examples:
                break
        if count == 0:
            raise AutoencoderError("fit_latent_stats: no images to estimate the latent scale on")
        mean = total / count
        std = (square / count - mean * mean).clamp_min(1e-12).sqrt()
        self.latent_shift.copy_(mean.to(self.latent_shift.dtype))
        self.latent_scale.copy_(std.to(self.latent_scale.dtype))
        self.stats_fitted.fill_(True)
        return {"shift": mean.tolist(), "scale": std.tolist(), "examples": seen}

    def fingerprint(self) -> str:
        """A 16-hex-digit hash of the class, every parameter and buffer (latent statistics included)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{type(self).__module__}.{type(self).__qualname__}".encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


AUTOENCODERS: Registry[Autoencoder] = Registry("autoencoder", base=Autoencoder)

__all__ = ["AUTOENCODERS", "Autoencoder", "AutoencoderConfig", "AutoencoderError", "ComponentConfig"]
