"""Predictors ``(u_t, t, s, cond) -> Distribution`` over ``u_s``. Each variant registers in ``PREDICTORS``, each
output head of the transformer predictors in ``HEADS``."""

from ntm.predictors.base import PREDICTORS, VELOCITY_HINT, Predictor, PredictorConfig, VelocityPredictor, velocity_model
from ntm.predictors.heads import (
    HEADS,
    GaussianHead,
    GaussianHeadConfig,
    Head,
    HeadConfig,
    MixtureHead,
    MixtureHeadConfig,
    gaussian_head,
)
from ntm.predictors.logistic_mixture_head import LogisticMixtureHead, LogisticMixtureHeadConfig
from ntm.predictors.posterior import (
    XHAT_MODELS,
    PosteriorPredictor,
    PosteriorPredictorConfig,
    VelocityPosteriorPredictor,
    VelocityTransformer,
    VelocityTransformerConfig,
    VelocityXHat,
    XHatModel,
)
from ntm.predictors.transformer import (
    TrajectoryPredictor,
    TrajectoryPredictorConfig,
    TransformerPredictor,
    TransformerPredictorConfig,
)

__all__ = [
    "HEADS", "GaussianHead", "GaussianHeadConfig", "Head", "HeadConfig", "MixtureHead", "MixtureHeadConfig",
    "LogisticMixtureHead", "LogisticMixtureHeadConfig",
    "PREDICTORS", "VELOCITY_HINT", "XHAT_MODELS", "PosteriorPredictor", "PosteriorPredictorConfig", "Predictor",
    "PredictorConfig", "TrajectoryPredictor", "TrajectoryPredictorConfig", "TransformerPredictor",
    "TransformerPredictorConfig", "VelocityPosteriorPredictor", "VelocityPredictor", "VelocityTransformer",
    "VelocityTransformerConfig", "VelocityXHat", "XHatModel", "gaussian_head", "velocity_model",
]
