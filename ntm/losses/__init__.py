"""Training losses and reported likelihood numbers. Each loss registers in ``LOSSES``."""

from ntm.losses.base import LOSSES, Loss, LossConfig, LossOutput
from ntm.losses.finetune import FinetuneConfig, FinetuneLoss
from ntm.losses.flow_matching import FlowMatchingConfig, FlowMatchingLoss
from ntm.losses.nll import (
    EndToEndConfig,
    EndToEndLoss,
    PairWiseConfig,
    PairWiseLoss,
    forward_log_prob,
    nll_traj_bpd,
    x0_bound_nats,
)

__all__ = [
    "LOSSES", "EndToEndConfig", "EndToEndLoss", "FinetuneConfig", "FinetuneLoss", "FlowMatchingConfig", "FlowMatchingLoss", "Loss", "LossConfig",
    "LossOutput", "PairWiseConfig", "PairWiseLoss", "forward_log_prob", "nll_traj_bpd", "x0_bound_nats",
]
