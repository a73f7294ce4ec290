"""Gaussian predictors ``(u_t, t, s, cond) -> N(mu, sigma^2)``. Each variant registers in ``PREDICTORS``."""

from ntm.predictors.base import PREDICTORS, VELOCITY_HINT, Predictor, PredictorConfig, VelocityPredictor, velocity_model
from ntm.predictors.heads import gaussian_head
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
    "PREDICTORS", "VELOCITY_HINT", "XHAT_MODELS", "PosteriorPredictor", "PosteriorPredictorConfig", "Predictor",
    "PredictorConfig", "TrajectoryPredictor", "TrajectoryPredictorConfig", "TransformerPredictor",
    "TransformerPredictorConfig", "VelocityPosteriorPredictor", "VelocityPredictor", "VelocityTransformer",
    "VelocityTransformerConfig", "VelocityXHat", "XHatModel", "gaussian_head", "velocity_model",
]
