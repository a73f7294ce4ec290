"""Shared helpers of the conformance checks: seeding, perturbation, error measures, failure messages."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor


def perturb_(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter, in place, so zero-initialised maps move far from the identity.

    The noise comes from a private generator seeded with ``seed`` (the global
    RNG is untouched); each parameter ``p`` of any shape receives noise of
    ``p.shape`` and ``p.dtype``. Returns ``module`` for chaining.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * scale)
    return module


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global CPU RNG seeded by ``seed``, restoring its state afterwards.

    Component constructors draw their initial weights from the global RNG;
    this makes a build a pure function of ``seed`` without leaking state into
    the caller.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / max(||b||, 1e-12)`` over all elements (float64 arithmetic)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """``max |a - b|`` (0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def fail(subject: str, message: str) -> None:
    """Raise ``AssertionError("<subject>: <message>")``."""
    raise AssertionError(f"{subject}: {message}")


def check(condition: bool, subject: str, message: str) -> None:
    """:func:`fail` unless ``condition`` holds (unlike ``assert``, never stripped by ``python -O``)."""
    if not condition:
        fail(subject, message)


def describe(config: object) -> str:
    """A short name for a config in failure messages: ``registry_name`` or class name, with its fields."""
    name = getattr(config, "registry_name", "") or type(config).__name__
    return f"{name!r} {config!r}"


def check_tensor(x: object, subject: str, what: str, shape: tuple[int, ...], *, dtype: torch.dtype | None = None) -> Tensor:
    """Check ``x`` is a finite tensor of ``shape`` (and ``dtype``, when given); returns it."""
    check(isinstance(x, Tensor), subject, f"{what} is not a tensor but {type(x).__name__}")
    assert isinstance(x, Tensor)
    check(tuple(x.shape) == tuple(shape), subject, f"{what} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if dtype is not None:
        check(x.dtype == dtype, subject, f"{what} has dtype {x.dtype}, expected {dtype}")
    if x.is_floating_point():
        bad = (~torch.isfinite(x)).sum().item()
        check(bad == 0, subject, f"{what} has {bad} non-finite entries")
    return x
