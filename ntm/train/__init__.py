"""The training loop and its parts: config, checkpoints, EMA, logging, distribution."""

from ntm.train.config import TrainConfig
from ntm.train.errors import CheckpointError, NonFiniteLossError, TrainingError

__all__ = ["CheckpointError", "NonFiniteLossError", "TrainConfig", "TrainingError"]
