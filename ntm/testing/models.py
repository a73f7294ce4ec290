"""Tiny NTMs for the sampler and loss checks, and finding one a component accepts."""

from __future__ import annotations

from typing import Callable

import torch

from ntm.spec import ModelDims
from ntm.testing._util import perturb_, seeded

MODEL_DIMS = ModelDims(3, 2, 3)
"""Three tokens of two channels, three classes (labels ``0 .. 3``, 3 the null label)."""


def text_conditioner():
    """The conditioner config of the tiny caption-conditioned models: ``small-text``, 8 positions, width 8."""
    from ntm.conditioning.text import SmallTextConfig

    return SmallTextConfig(context_length=8, width=8, depth=1, num_heads=2)


def text_model_dims(conditioner=None, num_tokens: int = 3, token_dim: int = 2) -> ModelDims:
    """The dims of a tiny caption-conditioned model (``conditioner`` defaults to :func:`text_conditioner`)."""
    conditioner = conditioner or text_conditioner()
    return ModelDims(num_tokens, token_dim, **conditioner.model_dims(0))


def tiny_model_configs() -> list:
    """Candidate ``NTMConfig`` s, simplest first: a tiny TarFlow + Markov transformer NTM, a velocity model, a finetuned one.

    The velocity model (identity transporter, posterior predictor over a
    velocity transformer) is what flow-matching losses and the Euler/Heun
    samplers need; the finetuned one (with a frozen reference copy) is what
    the finetuning loss needs. The forward process is left at ``NTMConfig``'s default.
    """
    from ntm.model import NTMConfig
    from ntm.predictors import PosteriorPredictorConfig, TransformerPredictorConfig, VelocityTransformerConfig
    from ntm.transporters import IdentityConfig, TarFlowConfig

    return [
        NTMConfig(
            transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, use_condition=True),
            predictor=TransformerPredictorConfig(depth=1, width=16, num_heads=2),
        ),
        NTMConfig(
            transporter=IdentityConfig(),
            predictor=PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16, num_heads=2)),
        ),
        NTMConfig(  # a finetuned model: TarFlow + the velocity posterior with a scale head and a frozen copy
            transporter=TarFlowConfig(width=16, num_heads=2, num_blocks=1, use_condition=True),
            predictor=PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16, num_heads=2),
                                               learned_scale=True, reference=True),
        ),
    ]


def build_model(
    model_config, dims: ModelDims = MODEL_DIMS, *, seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.float64,
    conditioner=None,
) -> torch.nn.Module:
    """``model_config.build(dims)``, init drawn from ``seed``, perturbed by ``scale``, cast to ``dtype``, eval mode.

    ``conditioner`` (a conditioner config with an encoder, e.g. :func:`text_conditioner`) adds its condition
    encoder to the model (``dims`` should then come from :func:`text_model_dims`).
    """
    with seeded(seed):
        if conditioner is None:
            model = model_config.build(dims)
        else:
            model = model_config.build(dims, condition_encoder=conditioner.encoder(dims))
    return perturb_(model, scale, seed).to(dtype).eval()


def build_text_model(model_config=None, *, seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.float64):
    """A tiny caption-conditioned NTM: ``model_config`` (default: the first of :func:`tiny_model_configs`) with
    :func:`text_conditioner`'s encoder, built like :func:`build_model`."""
    conditioner = text_conditioner()
    return build_model(model_config or tiny_model_configs()[0], text_model_dims(conditioner), seed=seed, scale=scale,
                       dtype=dtype, conditioner=conditioner)


def accepted_model(
    config, try_model: Callable[[torch.nn.Module], object], *, dims: ModelDims = MODEL_DIMS, seed: int = 0,
    scale: float = 0.05, dtype: torch.dtype = torch.float64, candidates: list | None = None,
) -> torch.nn.Module:
    """The first of :func:`tiny_model_configs` (or ``candidates``) that ``config`` accepts, built.

    A config with ``check_model(model_config)`` is asked directly (it raises
    ``ValueError`` to refuse); otherwise each candidate is built and
    ``try_model(model)`` run, a ``ValueError``, ``TypeError`` or
    ``NotImplementedError`` meaning "not this one". Raises ``AssertionError`` listing every refusal
    when no candidate fits.
    """
    reasons = []
    for model_config in candidates if candidates is not None else tiny_model_configs():
        checker = getattr(config, "check_model", None)
        if callable(checker):
            try:
                checker(model_config)
            except ValueError as e:
                reasons.append(f"{model_config!r}: {e}")
                continue
            return build_model(model_config, dims, seed=seed, scale=scale, dtype=dtype)
        model = build_model(model_config, dims, seed=seed, scale=scale, dtype=dtype)
        try:
            try_model(model)
        except (ValueError, TypeError, NotImplementedError) as e:
            reasons.append(f"{model_config!r}: {type(e).__name__}: {e}")
            continue
        return model
    raise AssertionError(
        f"{config!r} accepts none of the default tiny models; pass model=... explicitly. Refusals:\n  "
        + "\n  ".join(reasons)
    )
