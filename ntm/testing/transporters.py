"""The Transporter contract (:mod:`ntm.transporters.base`) as plain checks.

A transporter ``f(x; t, c)`` maps tokens ``x`` ``(B, N, d)`` to
``(u, logdet)`` with ``u`` ``(B, N, d)`` and ``logdet = log|det du/dx|`` of
shape ``(B,)``; it is a bijection for every ``(t, c)``. The checks build the
config, perturb its weights by ``scale * N(0, 1)`` (fresh transporters are
usually the identity), and verify

* round trip ``|f^{-1}(f(x)) - x| / |x|`` below ``1e-5`` (float32) or
  ``1e-10`` (float64, also ``|f(f^{-1}(z)) - z| / |z|``);
* ``logdet`` equal to ``log|det J|`` of the autograd Jacobian ``J = du/dx``
  ``(N d, N d)`` within ``1e-6`` nats (float64);
* every name in ``inverse_methods`` decoding the same ``x`` as the default
  inverse within ``1e-9`` (relative, float64);
* a freshly built (unperturbed) transporter being exactly the identity with
  zero ``logdet``.

Labels ``cond`` ``(B,)`` are drawn from ``0 .. num_classes`` (the null label
``num_classes`` included) when the dims are class-conditional; dims with
``cond_dim > 0`` get a random encoded :class:`~ntm.conditioning.condition.Condition`
(tokens and a padding mask, as an encoded caption) instead
(:mod:`ntm.testing.conditions`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ntm.spec import ModelDims
from ntm.testing._util import check, check_tensor, describe, perturb_, rel_err, seeded
from ntm.testing.conditions import TEXT_DIMS, condition_inputs, describe_condition

ROUND_TRIP_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
"""Relative round-trip error allowed per dtype."""
LOGDET_TOL = 1e-6
"""Absolute logdet error allowed against the autograd Jacobian (float64), nats."""
INVERSE_METHOD_TOL = 1e-9
"""Relative disagreement allowed between an alternative inverse and the default (float64)."""
DEFAULT_DIMS = ModelDims(4, 2, 3)


@dataclasses.dataclass(frozen=True)
class TransporterCase:
    """One problem of the fixed grid :func:`check_transporter` runs."""

    dims: ModelDims
    batch: int
    seed: int = 0
    with_labels: bool = True
    """Pass the condition the dims describe: labels when ``dims.num_classes > 0``, an encoded Condition when
    ``dims.cond_dim > 0`` (otherwise ``cond = None`` on a conditional model)."""


TRANSPORTER_CASES: tuple[TransporterCase, ...] = (
    TransporterCase(ModelDims(4, 2, 3), batch=3, seed=0),  # labels, the null label among them
    TransporterCase(ModelDims(1, 1), batch=1, seed=1),  # one token, one channel, one example
    TransporterCase(ModelDims(1, 3, 2), batch=2, seed=2),  # one token, conditional
    TransporterCase(ModelDims(5, 1), batch=2, seed=3),  # one channel, unconditional
    TransporterCase(ModelDims(3, 2, 2), batch=2, seed=4, with_labels=False),  # conditional model, cond=None
    TransporterCase(TEXT_DIMS, batch=3, seed=5),  # an encoded (text) Condition: pooled, tokens and padding mask
)


def build_transporter(
    config, dims: ModelDims = DEFAULT_DIMS, *, seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.float64
) -> torch.nn.Module:
    """``config.build(dims)`` with its init drawn from ``seed``, perturbed by ``scale``, cast to ``dtype``, in eval mode."""
    with seeded(seed):
        module = config.build(dims)
    return perturb_(module, scale, seed).to(dtype).eval()


def transporter_inputs(
    dims: ModelDims, batch: int, *, seed: int = 0, dtype: torch.dtype = torch.float64, with_labels: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``x`` ``(B, N, d)`` standard normal, ``t`` ``(B,)`` in ``[0.01, 0.99]``, ``cond`` ``(B,)`` int64, a
    Condition (``dims.cond_dim > 0``) or ``None``.

    With labels, ``cond`` is uniform on ``0 .. num_classes`` and its last
    entry is the null label ``num_classes`` when ``B > 1``.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, dims.num_tokens, dims.token_dim, generator=gen, dtype=dtype)
    t = torch.rand(batch, generator=gen, dtype=dtype) * 0.98 + 0.01
    return x, t, condition_inputs(dims, batch, gen, dtype=dtype, with_condition=with_labels)


def _forward(module, x: Tensor, t: Tensor, cond: Tensor | None, subject: str) -> tuple[Tensor, Tensor]:
    out = module(x, t, cond)
    check(isinstance(out, tuple) and len(out) == 2, subject, f"forward must return (u, logdet), got {type(out).__name__}")
    u, logdet = out
    check_tensor(u, subject, "u", tuple(x.shape), dtype=x.dtype)
    check_tensor(logdet, subject, "logdet", (x.shape[0],))
    check(logdet.is_floating_point(), subject, f"logdet has non-float dtype {logdet.dtype}")
    return u, logdet


def _subject(config, dims: ModelDims, batch: int, seed: int, scale: float, dtype: torch.dtype, with_labels: bool) -> str:
    labels = describe_condition(dims, with_labels)
    return f"transporter {describe(config)} on {dims}, batch={batch}, seed={seed}, scale={scale}, {dtype}, {labels}"


def check_transporter_round_trip(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 3, seed: int = 0, scale: float = 0.05,
    dtype: torch.dtype = torch.float64, with_labels: bool = True, tol: float | None = None,
) -> None:
    """``f^{-1}(f(x)) == x`` up to ``tol`` (relative; default :data:`ROUND_TRIP_TOL` of ``dtype``), plus shapes and dtypes.

    In float64 the other direction ``f(f^{-1}(z)) == z`` (``z ~ N(0, 1)``) is checked too.
    """
    subject = _subject(config, dims, batch, seed, scale, dtype, with_labels)
    tol = ROUND_TRIP_TOL.get(dtype, 1e-5) if tol is None else tol
    module = build_transporter(config, dims, seed=seed, scale=scale, dtype=dtype)
    x, t, cond = transporter_inputs(dims, batch, seed=seed, dtype=dtype, with_labels=with_labels)
    with torch.no_grad():
        u, _ = _forward(module, x, t, cond, subject)
        x_back = check_tensor(module.inverse(u, t, cond), subject, "inverse(u)", tuple(x.shape), dtype=dtype)
        err = rel_err(x_back, x)
        check(err < tol, subject, f"round trip inverse(forward(x)) has relative error {err:.3g} >= {tol:g}")
        if dtype == torch.float64:
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=dtype)
            z_back, _ = _forward(module, module.inverse(z, t, cond), t, cond, subject)
            err = rel_err(z_back, z)
            check(err < tol, subject, f"round trip forward(inverse(z)) has relative error {err:.3g} >= {tol:g}")


def check_transporter_logdet(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 3, seed: int = 0, scale: float = 0.05,
    with_labels: bool = True, tol: float = LOGDET_TOL,
) -> None:
    """``logdet[i] == log|det du_i/dx_i|`` of the float64 autograd Jacobian ``(N d, N d)``, for every example ``i``."""
    dtype = torch.float64
    subject = _subject(config, dims, batch, seed, scale, dtype, with_labels)
    module = build_transporter(config, dims, seed=seed, scale=scale, dtype=dtype)
    x, t, cond = transporter_inputs(dims, batch, seed=seed, dtype=dtype, with_labels=with_labels)
    _, logdet = _forward(module, x, t, cond, subject)
    for i in range(batch):
        ci = None if cond is None else cond[i : i + 1]

        def f(z: Tensor, i: int = i, ci: Tensor | None = ci) -> Tensor:
            return module(z.reshape(1, *x.shape[1:]), t[i : i + 1], ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i].reshape(-1))
        sign, expected = torch.linalg.slogdet(jac)
        check(sign.item() != 0, subject, f"example {i}: the Jacobian is singular")
        err = abs(logdet[i].item() - expected.item())
        check(
            err < tol, subject,
            f"example {i}: logdet {logdet[i].item():.10g} != log|det J| {expected.item():.10g} (error {err:.3g} >= {tol:g})",
        )


def check_transporter_inverse_methods(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 3, seed: int = 0, scale: float = 0.05,
    with_labels: bool = True, tol: float = INVERSE_METHOD_TOL,
) -> None:
    """Every ``inverse(u, method=m)`` for ``m`` in ``type(module).inverse_methods`` matches the default inverse (float64)."""
    dtype = torch.float64
    subject = _subject(config, dims, batch, seed, scale, dtype, with_labels)
    module = build_transporter(config, dims, seed=seed, scale=scale, dtype=dtype)
    methods = getattr(type(module), "inverse_methods", ())
    check(
        isinstance(methods, tuple) and all(isinstance(m, str) for m in methods), subject,
        f"inverse_methods must be a tuple of names, got {methods!r}",
    )
    x, t, cond = transporter_inputs(dims, batch, seed=seed, dtype=dtype, with_labels=with_labels)
    with torch.no_grad():
        u, _ = _forward(module, x, t, cond, subject)
        reference = module.inverse(u, t, cond)
        for method in methods:
            out = module.inverse(u, t, cond, method=method)
            check_tensor(out, subject, f"inverse(method={method!r})", tuple(x.shape))
            err = rel_err(out, reference)
            check(err < tol, subject,
                  f"inverse method {method!r} differs from the default by {err:.3g} >= {tol:g} (relative)")


def check_transporter_identity_at_init(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64,
    with_labels: bool = True,
) -> None:
    """A freshly built transporter (no perturbation) returns ``u == x`` exactly and ``logdet == 0``."""
    subject = _subject(config, dims, batch, seed, 0.0, dtype, with_labels) + " (fresh)"
    with seeded(seed):
        module = config.build(dims)
    module = module.to(dtype).eval()
    x, t, cond = transporter_inputs(dims, batch, seed=seed, dtype=dtype, with_labels=with_labels)
    with torch.no_grad():
        u, logdet = _forward(module, x, t, cond, subject)
    check(torch.equal(u, x), subject,
          f"a fresh transporter is not the identity (max |u - x| = {(u - x).abs().max().item():.3g})")
    check(bool(torch.all(logdet == 0)), subject, f"a fresh transporter has nonzero logdet {logdet.tolist()}")


def check_transporter(
    config, *, cases: tuple[TransporterCase, ...] = TRANSPORTER_CASES, scale: float = 0.05, identity_at_init: bool = True,
) -> None:
    """The whole Transporter contract on a small fixed grid of problems (:data:`TRANSPORTER_CASES`).

    Each case runs the float32 and float64 round trips, the logdet check, the
    inverse-method check and (unless ``identity_at_init=False``, for variants
    that are deliberately not the identity at initialisation) the
    identity-at-init check. Raises ``AssertionError`` naming the case on the
    first violation.
    """
    for case in cases:
        kw = dict(dims=case.dims, batch=case.batch, seed=case.seed, with_labels=case.with_labels)
        check_transporter_round_trip(config, scale=scale, dtype=torch.float32, **kw)
        check_transporter_round_trip(config, scale=scale, dtype=torch.float64, **kw)
        check_transporter_logdet(config, scale=scale, **kw)
        check_transporter_inverse_methods(config, scale=scale, **kw)
        if identity_at_init:
            check_transporter_identity_at_init(config, **kw)
