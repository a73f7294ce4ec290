"""Sample-based distances for low-dimensional data: energy distance, RBF MMD², oracle log-density.

All functions take point sets ``(N, D)`` / ``(M, D)`` (any float dtype, any
device) and compute in float64. Pairwise quantities are accumulated over row
chunks, so no ``N x M`` matrix is ever held: two sets of 10k points need a few
tens of MB, not gigabytes.

By default both two-sample statistics are *V-statistics* (diagonal terms
included): they are the exact distance between the two empirical
distributions, hence ``>= 0`` and exactly ``0`` for identical sets. The
``unbiased=True`` variants drop the within-set diagonals (U-statistics); they
are unbiased for the population value but can be slightly negative.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ntm.data.mixture import GaussianMixture

F64 = torch.float64

DEFAULT_BANDWIDTH_SCALES: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Multiples of the median pairwise distance used as RBF bandwidths when none are given."""

MEDIAN_HEURISTIC_MAX_POINTS = 2000
"""The median heuristic looks at pairwise distances of at most this many pooled points (seeded subsample)."""

_CHUNK_ELEMENTS = 1 << 17  # 128K float64 entries (1 MB) per distance block: cache-sized, fast elementwise ops


def _check_sets(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two point sets and return them as float64 on ``x``'s device."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name} must be (N, D), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{name} is empty")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    x, y = x.to(F64), y.to(device=x.device, dtype=F64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be finite (found nan or inf)")
    return x, y


def _pairwise_sum(a: Tensor, b: Tensor, fn: Callable[[Tensor], Tensor], chunk_size: int | None) -> Tensor:
    """``sum_ij fn(|a_i - b_j|)`` over ``a (N, D)``, ``b (M, D)``, in row chunks; 0-d float64."""
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = torch.zeros((), dtype=F64, device=a.device)
    for start in range(0, a.shape[0], chunk_size):
        # the direct (non-matmul) mode is exact: |a - a| is 0, not ~1e-8
        d = torch.cdist(a[start : start + chunk_size], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += fn(d).sum()
    return total


def _within_mean(a: Tensor, fn: Callable[[Tensor], Tensor], unbiased: bool, chunk_size: int | None) -> Tensor:
    """Mean of ``fn(|a_i - a_j|)`` over all pairs (V) or over ``i != j`` (U)."""
    n = a.shape[0]
    total = _pairwise_sum(a, a, fn, chunk_size)
    if not unbiased:
        return total / (n * n)
    if n < 2:
        raise ValueError("the unbiased estimator needs at least 2 points per set")
    diag = fn(torch.zeros((), dtype=F64, device=a.device)) * n
    return (total - diag) / (n * (n - 1))


def energy_distance(x: Tensor, y: Tensor, *, unbiased: bool = False, chunk_size: int | None = None) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between ``x (N, D)`` and ``y (M, D)``.

    Default: the V-statistic (all pairs, including ``i = j``), i.e. the energy
    distance between the two empirical distributions: ``>= 0``, ``0`` iff the
    sets are equal as multisets. ``unbiased=True`` excludes the within-set
    diagonals (U-statistic; may be slightly negative). Euclidean norm; rows are
    processed ``chunk_size`` at a time (default: blocks of ~128K distances).
    """
    x, y = _check_sets(x, y)
    ident = lambda d: d  # noqa: E731
    cross = _pairwise_sum(x, y, ident, chunk_size) / (x.shape[0] * y.shape[0])
    xx = _within_mean(x, ident, unbiased, chunk_size)
    yy = _within_mean(y, ident, unbiased, chunk_size)
    return float(2 * cross - xx - yy)


def median_pairwise_distance(x: Tensor, y: Tensor | None = None, *, max_points: int = MEDIAN_HEURISTIC_MAX_POINTS) -> float:
    """Median Euclidean distance between distinct points of ``x (N, D)`` pooled with ``y (M, D)``.

    Above ``max_points`` pooled points a fixed-seed subsample is used, so the
    result is deterministic. Raises if the median is 0 (e.g. all points equal).
    """
    pooled = x.to(F64) if y is None else torch.cat([x.to(F64), y.to(device=x.device, dtype=F64)])
    if pooled.shape[0] < 2:
        raise ValueError("the median heuristic needs at least 2 points")
    if pooled.shape[0] > max_points:
        idx = torch.randperm(pooled.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]
        pooled = pooled[idx.to(pooled.device)]
    d = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
    med = float(d[iu[0], iu[1]].median())
    if med <= 0:
        raise ValueError("median pairwise distance is 0 (points coincide); pass bandwidths explicitly")
    return med


def mmd_rbf(
    x: Tensor,
    y: Tensor,
    bandwidths: Sequence[float] | None = None,
    *,
    unbiased: bool = False,
    chunk_size: int | None = None,
) -> float:
    """MMD² between ``x (N, D)`` and ``y (M, D)`` with the kernel ``k(a, b) = sum_s exp(-|a - b|² / (2 s²))``.

    ``bandwidths`` are the ``s`` values; by default the median heuristic:
    ``median_pairwise_distance(x, y) * DEFAULT_BANDWIDTH_SCALES``. Each kernel
    has ``k(a, a) = 1``, so the sum has ``k(a, a) = len(bandwidths)`` (the value
    is not normalised by the number of bandwidths). Default: the V-statistic
    (biased, ``>= 0``, exactly 0 for identical sets); ``unbiased=True`` drops the
    within-set diagonals.
    """
    x, y = _check_sets(x, y)
    if bandwidths is None:
        med = median_pairwise_distance(x, y)
        bandwidths = [med * s for s in DEFAULT_BANDWIDTH_SCALES]
    bw = [float(s) for s in bandwidths]
    if not bw or any(not (s > 0) for s in bw):
        raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers, got {list(bandwidths)}")
    gammas = [0.5 / s**2 for s in bw]

    def kernel(d: Tensor) -> Tensor:
        d2 = d.square_()
        out = torch.zeros_like(d2)
        for g in gammas:  # a loop, not a broadcast: keeps the block at one (chunk, M) buffer
            out.add_(torch.mul(d2, -g).exp_())
        return out

    cross = _pairwise_sum(x, y, kernel, chunk_size) / (x.shape[0] * y.shape[0])
    xx = _within_mean(x, kernel, unbiased, chunk_size)
    yy = _within_mean(y, kernel, unbiased, chunk_size)
    return float(xx + yy - 2 * cross)


def oracle_log_density(samples: Tensor, mixture: GaussianMixture, *, batch_size: int = 65536) -> float:
    """Mean ``log p(x)`` of ``samples (N, D)`` under the true data density ``mixture`` (nats).

    A precision-like score: how much of a model's sample mass lands where the
    data lives (higher is better; it does not penalise missing modes).
    """
    if not isinstance(samples, Tensor) or samples.ndim != 2:
        raise ValueError(f"samples must be an (N, D) tensor, got {getattr(samples, 'shape', type(samples))}")
    if samples.shape[0] == 0:
        raise ValueError("samples is empty")
    if samples.shape[1] != mixture.dim:
        raise ValueError(f"samples have dimension {samples.shape[1]} but the mixture has {mixture.dim}")
    s = samples.detach().to("cpu", F64)
    if not torch.isfinite(s).all():
        raise ValueError("samples must be finite (found nan or inf)")
    total = sum(float(mixture.log_prob(chunk).sum()) for chunk in s.split(batch_size))
    return total / s.shape[0]


__all__ = [
    "DEFAULT_BANDWIDTH_SCALES", "energy_distance", "median_pairwise_distance", "mmd_rbf", "oracle_log_density",
]
