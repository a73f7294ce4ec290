"""Data sources. Each variant registers in ``DATA_SOURCES``; every variant module is imported here explicitly.

Shard writing (``write_shards``, ``write_source_shards``; the command line is
``ntm shards write``) lives in :mod:`ntm.data.shards`; cached latents
(``ntm shards write --encode``) in :mod:`ntm.data.latent_shards`.
"""

from ntm.data.base import DATA_SOURCES, Batch, DataError, DataSource, DataSpec
from ntm.data.digits import Digits, DigitsConfig
from ntm.data.folder import ImageFolder, ImageFolderConfig
from ntm.data.latent_shards import LatentShardsConfig, LatentShardsSource
from ntm.data.shapes import Shapes, ShapesConfig
from ntm.data.streaming import CorruptSampleWarning, WebDatasetConfig, WebDatasetSource
from ntm.data.streams import InMemorySource, derive_seed
from ntm.data.toys import (
    Checkerboard,
    CheckerboardConfig,
    EightGaussians,
    EightGaussiansConfig,
    Mixture,
    MixtureConfig,
    MixtureSource,
    Moons,
    MoonsConfig,
    Spirals,
    SpiralsConfig,
    ToyConfig,
    ToySource,
)

__all__ = [
    "DATA_SOURCES", "Batch", "Checkerboard", "CheckerboardConfig", "CorruptSampleWarning", "DataError",
    "DataSource", "DataSpec", "Digits", "DigitsConfig", "EightGaussians", "EightGaussiansConfig", "ImageFolder",
    "ImageFolderConfig", "InMemorySource", "LatentShardsConfig", "LatentShardsSource", "Mixture", "MixtureConfig",
    "MixtureSource", "Moons", "MoonsConfig", "Shapes", "ShapesConfig", "Spirals", "SpiralsConfig", "ToyConfig",
    "ToySource", "WebDatasetConfig", "WebDatasetSource", "derive_seed",
]
