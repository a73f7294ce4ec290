"""The Predictor contract (:mod:`ntm.predictors.base`) as plain checks.

A predictor maps ``u_t`` ``(B, N, d)`` at times ``t > s`` (``(B,)`` each)
and labels ``cond`` (``(B,)`` or ``None``) to a
:class:`~ntm.distributions.Distribution` over ``u_s`` ``(B, N, d)`` (a diagonal
``Gaussian(mu, log_sigma)``, both ``(B, N, d)``, or its head's). On a
trajectory ``u_1 .. u_K`` (``u_levels`` ``(K, B, N, d)``, ``times``
``(K + 1,)``), ``forward_trajectory`` returns ``(K, B, N, d)`` whose entry
``k - 1`` predicts ``u_{k-1}`` from level ``k``. The checks (float64,
weights perturbed by ``scale * N(0, 1)``):

* draws of shape ``(B, N, d)`` / ``(K, B, N, d)``; every parameter tensor of
  the shape the distribution declares for them (``param_shapes``), float64, finite;
* teacher-forced == cached sampling: entry ``k - 1`` of
  ``forward_trajectory`` equals ``step(u_k, t_k, t_{k-1}, cond, cache)``
  run from ``k = K`` down to ``1`` with one ``new_cache()`` (every parameter
  tensor within ``atol`` ``1e-12``); for Markov predictors it also equals the plain call
  ``predictor(u_k, t_k, t_{k-1}, cond)``;
* causality in levels: moving a cleaner level ``u_j`` changes no prediction
  made from a noisier level ``k > j``.

Every check runs without labels and, for class-conditional dims, with
labels that include the null label ``num_classes``; for dims with an encoded
condition (``cond_dim > 0``, e.g. :data:`~ntm.testing.conditions.TEXT_DIMS`)
with a random :class:`~ntm.conditioning.condition.Condition`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ntm.distributions import Distribution
from ntm.spec import ModelDims
from ntm.testing._util import check, check_tensor, describe, max_abs_diff, perturb_, seeded
from ntm.testing.conditions import TEXT_DIMS, condition_inputs, describe_condition

DEFAULT_DIMS = ModelDims(3, 2, 4)
DEFAULT_TIMES = (0.05, 0.3, 0.6, 1.0)
"""``t_0 .. t_K`` of the test trajectory (K = 3)."""
PREDICTOR_DIMS: tuple[ModelDims, ...] = (ModelDims(3, 2, 4), ModelDims(1, 1), TEXT_DIMS)
"""The dims :func:`check_predictor` runs: class-conditional with several tokens, one unconditional scalar token,
and an encoded (text) condition with tokens."""
ATOL = 1e-12


def build_predictor(config, dims: ModelDims = DEFAULT_DIMS, *, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """``config.build(dims)`` with its init drawn from ``seed``, perturbed by ``scale``, in float64 and eval mode."""
    with seeded(seed):
        module = config.build(dims)
    return perturb_(module, scale, seed).double().eval()


def predictor_inputs(
    dims: ModelDims, batch: int, times=DEFAULT_TIMES, *, seed: int = 0, with_labels: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``u_levels`` ``(K, B, N, d)`` float64, ``times`` ``(K + 1,)`` float64, ``cond`` ``(B,)`` int64, a
    float64 Condition (``dims.cond_dim > 0``) or ``None``.

    Labels are uniform on ``0 .. num_classes`` with the last one the null label when ``B > 1``.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    times = torch.as_tensor(times, dtype=torch.float64)
    u = torch.randn(times.numel() - 1, batch, dims.num_tokens, dims.token_dim, generator=gen, dtype=torch.float64)
    return u, times, condition_inputs(dims, batch, gen, with_condition=with_labels)


def _check_distribution(g: object, subject: str, what: str, shape: tuple[int, ...]) -> Distribution:
    check(isinstance(g, Distribution), subject,
          f"{what} returned {type(g).__name__}, expected an ntm.distributions.Distribution")
    assert isinstance(g, Distribution)
    params = g.params()
    for name, expected in g.param_shapes(shape).items():
        check(name in params, subject, f"{what} has no parameter {name!r}")
        check_tensor(params[name], subject, f"{what}.{name}", expected, dtype=torch.float64)
    return g


def _close(a: Distribution, b: Distribution, atol: float, subject: str, message: str) -> None:
    check(type(a) is type(b), subject, f"{message}: {type(a).__name__} vs {type(b).__name__}")
    pa, pb = a.params(), b.params()
    err = max(max_abs_diff(pa[name], pb[name]) for name in pa)
    check(err <= atol, subject, f"{message}: max difference {err:.3g} > {atol:g}")


def _setup(config, dims, batch, times, seed, scale, with_labels):
    labels = describe_condition(dims, with_labels)
    subject = f"predictor {describe(config)} on {dims}, batch={batch}, seed={seed}, scale={scale}, {labels}"
    predictor = build_predictor(config, dims, seed=seed, scale=scale)
    u, times, cond = predictor_inputs(dims, batch, times, seed=seed, with_labels=with_labels)
    return subject, predictor, u, times, cond


def check_predictor_outputs(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 4, times=DEFAULT_TIMES, seed: int = 0, scale: float = 0.05,
    with_labels: bool = True,
) -> None:
    """One step and a teacher-forced pass return distributions of finite float64 parameters over ``(B, N, d)`` and
    ``(K, B, N, d)``."""
    subject, predictor, u, times, cond = _setup(config, dims, batch, times, seed, scale, with_labels)
    k = u.shape[0]
    with torch.no_grad():
        one = predictor(u[-1], times[k].expand(batch), times[k - 1].expand(batch), cond)
        _check_distribution(one, subject, "forward", tuple(u.shape[1:]))
        _check_distribution(predictor.forward_trajectory(u, times, cond), subject, "forward_trajectory", tuple(u.shape))
    check(isinstance(getattr(type(predictor), "markov", None), bool), subject, "class attribute 'markov' must be a bool")


def check_predictor_trajectory(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 4, times=DEFAULT_TIMES, seed: int = 0, scale: float = 0.05,
    with_labels: bool = True, atol: float = ATOL,
) -> None:
    """Teacher-forced ``forward_trajectory`` equals level-by-level ``step`` with one ``new_cache()`` (noisiest first).

    Markov predictors (``markov = True``) must also match the plain per-level call ``predictor(u_k, t_k, t_{k-1}, cond)``.
    """
    subject, predictor, u, times, cond = _setup(config, dims, batch, times, seed, scale, with_labels)
    k = u.shape[0]
    with torch.no_grad():
        batched = _check_distribution(predictor.forward_trajectory(u, times, cond), subject, "forward_trajectory", tuple(u.shape))
        cache = predictor.new_cache()
        for level in range(k, 0, -1):
            t, s = times[level].expand(batch), times[level - 1].expand(batch)
            step = predictor.step(u[level - 1], t, s, cond, cache)
            _check_distribution(step, subject, f"step at level {level}", tuple(u.shape[1:]))
            _close(step, batched.map(lambda z: z[level - 1]), atol, subject,
                   f"teacher-forced forward_trajectory != cached step at level {level} of {k}")
            if type(predictor).markov:
                plain = predictor(u[level - 1], t, s, cond)
                _close(plain, batched.map(lambda z: z[level - 1]), atol, subject,
                       f"Markov predictor: forward_trajectory != per-level call at level {level} of {k}")


def check_predictor_causality(
    config, *, dims: ModelDims = DEFAULT_DIMS, batch: int = 4, times=DEFAULT_TIMES, seed: int = 0, scale: float = 0.05,
    with_labels: bool = True, atol: float = ATOL,
) -> None:
    """Moving a cleaner level ``u_j`` (by +1) leaves every prediction made from a noisier level ``k > j`` unchanged."""
    subject, predictor, u, times, cond = _setup(config, dims, batch, times, seed, scale, with_labels)
    with torch.no_grad():
        base = predictor.forward_trajectory(u, times, cond)
        for cleaner in range(u.shape[0] - 1):  # index `cleaner` holds u_{cleaner+1}
            moved = u.clone()
            moved[cleaner] += 1.0
            out = predictor.forward_trajectory(moved, times, cond)
            _close(out.map(lambda z: z[cleaner + 1 :]), base.map(lambda z: z[cleaner + 1 :]), atol, subject,
                   f"moving level u_{cleaner + 1} changed predictions made from noisier levels")


def check_predictor(
    config, *, dims: tuple[ModelDims, ...] = PREDICTOR_DIMS, batch: int = 3, times=DEFAULT_TIMES, seed: int = 0,
    scale: float = 0.05, atol: float = ATOL,
) -> None:
    """The whole Predictor contract: outputs, teacher-forced == cached sampling, causality, with and without a
    condition.

    Runs each check on every entry of ``dims``, without a condition and (for
    conditional dims) with labels including the null label, or an encoded Condition.
    """
    for d in dims:
        for with_labels in ((False, True) if d.conditional else (False,)):
            kw = dict(dims=d, batch=batch, times=times, seed=seed, scale=scale, with_labels=with_labels)
            check_predictor_outputs(config, **kw)
            check_predictor_trajectory(config, atol=atol, **kw)
            check_predictor_causality(config, atol=atol, **kw)
