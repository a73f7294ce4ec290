"""Image sample quality through torch-fidelity: FID, KID, precision / recall.

:func:`fidelity_metrics` scores generated images against reference images
with any torch-fidelity feature extractor. Two kinds are supported offline:

- ``"ntm-domain"`` (:data:`DOMAIN_EXTRACTOR`, :class:`DomainFeatureExtractor`):
  the penultimate layer of a small CNN classifier trained on the dataset's own
  training split (:mod:`eval.domain_classifier`, which also caches it on
  disk) — the meaningful choice for tiny images (8x8 digits) that an ImageNet
  network resized to 299x299 does not see well, and it runs in milliseconds
  on a CPU. :func:`domain_extractor_for_digits` trains-or-loads the digits
  classifier and returns ``(extractor, kwargs)`` for :func:`fidelity_metrics`.
- torch-fidelity's own extractors with weights from a local file:
  ``extractor="inception-v3-compat", weights_path=PATH`` (standard FID), also
  ``"vgg16"`` and ``"clip-*"``. Nothing is ever downloaded: a missing
  ``weights_path`` is an error, and ``dinov2-*`` (hub-only) is refused.

**Trusted paths only.** torch-fidelity reads its own extractors' weight files
itself: ``inception-v3-compat`` and ``vgg16`` with
``torch.load(weights_only=False)``, ``clip-*`` with ``torch.jit.load``. Either
can run code stored in the file, and ntm cannot restrict it, so
``weights_path`` for those extractors must be a file you trust like code (for
Inception, the published ``pt_inception-2015-12-05`` weights). The
``ntm-domain`` extractor's checkpoint is ntm's own and is read with
``weights_only=True`` (:func:`eval.domain_classifier.load_domain_classifier`).

Metric conventions (torch-fidelity's): ``samples`` is input 1 (generated),
``reference`` input 2 (real). Precision = fraction of samples inside the
reference manifold (k-NN balls, k = ``prc_neighborhood`` = 3), recall = the
converse. KID is the unbiased polynomial-kernel MMD² averaged over
``kid_subsets`` random subsets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity import calculate_metrics, register_feature_extractor
from torch_fidelity.defaults import DEFAULTS as _TF_DEFAULTS
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ntm.eval.domain_classifier import DomainClassifierConfig, digits_domain_classifier, load_domain_classifier

DOMAIN_EXTRACTOR = "ntm-domain"
"""torch-fidelity name of the domain-classifier feature extractor."""

# Metric keys: torch-fidelity's -> ours.
_KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
# Built-in extractors that can load local weights (``feature_extractor_weights_path``).
_LOCAL_WEIGHTS_BUILTINS = ("inception-v3-compat", "vgg16", "clip-")
# calculate_metrics arguments fidelity_metrics sets itself.
_RESERVED = {
    "input1", "input2", "cuda", "isc", "fid", "kid", "prc", "ppl", "feature_extractor", "kid_subset_size",
    "feature_extractor_weights_path", "feature_extractor_compile", "save_cpu_ram", "cache", "cache_root",
}


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over a :class:`~eval.domain_classifier.DomainClassifier` checkpoint.

    Pass the checkpoint as ``feature_extractor_weights_path`` to
    ``calculate_metrics`` (``weights_path`` to :func:`fidelity_metrics`).
    Input batches: float ``(B, C, H, W)`` in ``[0, 1]`` (or uint8 ``0..255``).
    Features: ``"penultimate"`` ``(B, feature_dim)`` (default for FID / KID /
    PRC) and ``"logits"`` ``(B, num_classes)`` (default for ISC).
    """

    accepts_float01 = True
    """Tells :func:`fidelity_metrics` to feed float images in ``[0, 1]`` rather than uint8 RGB."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"feature extractor {name!r} needs feature_extractor_weights_path: a DomainClassifier checkpoint "
                "(see eval.domain_classifier.load_or_train_domain_classifier)"
            )
        self.classifier = load_domain_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = x.to(torch.float32) / 255 if x.dtype == torch.uint8 else x.to(torch.float32)
        feats = self.classifier.features(x)
        out = {"penultimate": feats}
        if "logits" in self.features_list:
            out["logits"] = self.classifier.head(feats / self.classifier.feature_scale)
        return tuple(out[name] for name in self.features_list)


if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DOMAIN_EXTRACTOR, DomainFeatureExtractor)


class ImageTensorDataset(Dataset):
    """Bare-tensor dataset over ``images (N, ...)`` (torch-fidelity refuses datasets that return tuples)."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def to_uint8_rgb(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` float in ``[0, 1]`` with ``C`` in {1, 3} -> uint8 ``(N, 3, H, W)`` (grey repeated)."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"RGB extractors need 1 or 3 channels, got {x.shape[1]}")
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8


def _check_images(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{what} must be a float (N, C, H, W) tensor in [0, 1], got {getattr(x, 'shape', type(x))}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains nan or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(
            f"{what} must lie in [0, 1] (got [{lo:.3g}, {hi:.3g}]); map model outputs with the data source's to_display"
        )
    return x.clamp(0, 1)


def _resolve_extractor(extractor: str, weights_path: str | os.PathLike | None) -> type:
    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature extractor {extractor!r}; registered: {sorted(FEATURE_EXTRACTORS_REGISTRY)}")
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    builtin = cls.__module__.startswith("torch_fidelity.")
    if builtin and not extractor.startswith(_LOCAL_WEIGHTS_BUILTINS):
        raise ValueError(f"feature extractor {extractor!r} can only fetch its weights online; ntm never downloads")
    if weights_path is None and (builtin or issubclass(cls, DomainFeatureExtractor)):
        raise ValueError(
            f"feature extractor {extractor!r} needs weights_path= (a local file); ntm never downloads weights"
        )
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise FileNotFoundError(f"feature extractor weights not found: {weights_path}")
    return cls


def fidelity_metrics(
    samples: Tensor,
    reference: Tensor,
    *,
    extractor: str,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
    kid_subset_size: int | None = None,
    device: str | torch.device = "cpu",
    **extractor_kwargs: Any,
) -> dict[str, float]:
    """FID / KID / precision-recall of ``samples (N, C, H, W)`` against ``reference (M, C, H, W)``, both in ``[0, 1]``.

    ``extractor``: a registered torch-fidelity feature extractor name, e.g.
    :data:`DOMAIN_EXTRACTOR` or ``"inception-v3-compat"``; ``weights_path``
    (in ``extractor_kwargs``) is its local weights file / checkpoint, required
    for the built-in and domain extractors (``FileNotFoundError`` naming the
    path if missing; nothing is downloaded). Other ``extractor_kwargs`` go to
    ``torch_fidelity.calculate_metrics`` (e.g. ``batch_size``, ``kid_subsets``,
    ``prc_neighborhood``, ``rng_seed``, ``feature_layer_fid``, ``verbose``).
    Images are fed as float ``[0, 1]`` to extractors that declare
    ``accepts_float01`` and as uint8 RGB ``(B, 3, H, W)`` otherwise (grey
    repeated; Inception resizes to 299 itself).

    ``kid_subset_size`` defaults to ``min(1000, N, M)``. ``device``: ``"cpu"``
    or a CUDA device. Returns a subset of ``fid``, ``kid_mean``, ``kid_std``,
    ``precision``, ``recall``, ``f_score``.
    """
    if not (fid or kid or prc):
        raise ValueError("nothing to compute: fid, kid and prc are all False")
    samples = _check_images(samples, "samples")
    reference = _check_images(reference, "reference")
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and reference {tuple(reference.shape[1:])} image shapes differ")
    n, m = samples.shape[0], reference.shape[0]
    if min(n, m) < 2:
        raise ValueError(f"need at least 2 images in each set, got {n} samples and {m} reference")

    kwargs = dict(extractor_kwargs)
    weights_path = kwargs.pop("weights_path", None)
    bad = sorted(k for k in kwargs if k in _RESERVED or k not in _TF_DEFAULTS)
    if bad:
        raise ValueError(f"unsupported extractor_kwargs {bad}: pass weights_path= and torch-fidelity metric options")
    cls = _resolve_extractor(extractor, weights_path)

    if prc:
        k = int(kwargs.get("prc_neighborhood", _TF_DEFAULTS["prc_neighborhood"]))
        if min(n, m) <= k:
            raise ValueError(f"precision/recall with prc_neighborhood={k} needs more than {k} images per set")
    if kid:
        if kid_subset_size is None:
            kid_subset_size = min(_TF_DEFAULTS["kid_subset_size"], n, m)
        if not 2 <= kid_subset_size <= min(n, m):
            raise ValueError(f"kid_subset_size must be in [2, {min(n, m)}] (the smaller set), got {kid_subset_size}")
        kwargs["kid_subset_size"] = kid_subset_size

    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")

    if getattr(cls, "accepts_float01", False):
        inputs = (samples, reference)
    else:
        inputs = (to_uint8_rgb(samples), to_uint8_rgb(reference))
    kwargs.setdefault("verbose", False)
    call = dict(
        kwargs,
        input1=ImageTensorDataset(inputs[0]),
        input2=ImageTensorDataset(inputs[1]),
        feature_extractor=extractor,
        fid=fid, kid=kid, prc=prc, isc=False, ppl=False,
        cuda=dev.type == "cuda",
        save_cpu_ram=True,  # no loader worker processes
        cache=False,  # never write torch-fidelity's on-disk cache
    )  # fmt: skip
    if weights_path is not None:
        call["feature_extractor_weights_path"] = str(Path(weights_path).expanduser())
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            raw = calculate_metrics(**call)
    else:
        raw = calculate_metrics(**call)
    return {_KEYS.get(k, k): float(v) for k, v in raw.items()}


def domain_extractor_for_digits(
    cache_dir: str | Path | None = None, config: DomainClassifierConfig = DomainClassifierConfig()
) -> tuple[str, dict[str, Any]]:
    """Train-or-load the digits classifier; ``(extractor, kwargs)`` for ``fidelity_metrics(s, r, extractor=..., **kwargs)``."""
    model = digits_domain_classifier(cache_dir, config)
    return DOMAIN_EXTRACTOR, {"weights_path": str(model.cache_path)}



def domain_extractor_for_shapes(
    image_size: int = 32, cache_dir: str | Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Train-or-load the shapes classifier (:func:`eval.domain_classifier.shapes_domain_classifier`); ``(extractor,
    kwargs)`` for ``fidelity_metrics``."""
    from ntm.eval.domain_classifier import shapes_domain_classifier

    model = shapes_domain_classifier(image_size, cache_dir)
    return DOMAIN_EXTRACTOR, {"weights_path": str(model.cache_path)}


__all__ = [
    "DOMAIN_EXTRACTOR", "DomainClassifierConfig", "DomainFeatureExtractor", "ImageTensorDataset",
    "domain_extractor_for_digits", "domain_extractor_for_shapes", "fidelity_metrics", "to_uint8_rgb",
]
