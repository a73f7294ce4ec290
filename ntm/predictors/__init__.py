"""Gaussian predictors ``(u_t, t, s, cond) -> N(mu, sigma^2)``. Each variant registers in ``PREDICTORS``."""

from ntm.predictors.base import PREDICTORS, Predictor, PredictorConfig
from ntm.predictors.heads import gaussian_head
from ntm.predictors.posterior import (
    XHAT_MODELS,
    PosteriorPredictor,
    PosteriorPredictorConfig,
    VelocityTransformer,
    VelocityTransformerConfig,
    XHatModel,
)
from ntm.predictors.transformer import (
    TrajectoryPredictor,
    TrajectoryPredictorConfig,
    TransformerPredictor,
    TransformerPredictorConfig,
)

__all__ = [
    "PREDICTORS", "XHAT_MODELS", "PosteriorPredictor", "PosteriorPredictorConfig", "Predictor", "PredictorConfig",
    "TrajectoryPredictor", "TrajectoryPredictorConfig", "TransformerPredictor", "TransformerPredictorConfig",
    "VelocityTransformer", "VelocityTransformerConfig", "XHatModel", "gaussian_head",
]
