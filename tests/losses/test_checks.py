"""Config-time rejection of a loss (or ODE sampler) that cannot use the model's slot values."""

import pytest

from ntm.losses import LOSSES, EndToEndConfig, FlowMatchingConfig, LossConfig, PairWiseConfig
from ntm.model import NTMConfig
from ntm.predictors import (
    PosteriorPredictorConfig,
    TrajectoryPredictorConfig,
    TransformerPredictorConfig,
    VelocityTransformerConfig,
)
from ntm.samplers import SAMPLERS, AncestralConfig, EulerConfig, HeunConfig
from ntm.transporters import IdentityConfig, TarFlowConfig

VELOCITY = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16))
FLOW_MATCHING_MODEL = NTMConfig(transporter=IdentityConfig(), predictor=VELOCITY)


def rejects(check, model: NTMConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        check(model)
    assert "\n" not in str(err.value), "the message is one line"


def test_every_loss_config_is_a_loss_config():
    assert all(issubclass(LOSSES.get(name).config_cls, LossConfig) for name in LOSSES.names())


def test_flow_matching_rejects_a_transporter_it_would_ignore():
    model = FLOW_MATCHING_MODEL.replace(transporter=TarFlowConfig(width=16, num_heads=2))
    rejects(FlowMatchingConfig().check_model, model,
            "loss flow-matching trains the velocity on x directly and would ignore transporter 'tarflow'; "
            "use transporter:identity")


def test_flow_matching_rejects_a_predictor_without_velocity():
    model = FLOW_MATCHING_MODEL.replace(predictor=TransformerPredictorConfig(depth=1, width=16))
    rejects(FlowMatchingConfig().check_model, model, "predictor 'transformer' does not give")


@pytest.mark.parametrize("sampler", [EulerConfig(), HeunConfig()])
def test_ode_samplers_reject_a_predictor_without_velocity(sampler):
    model = FLOW_MATCHING_MODEL.replace(predictor=TransformerPredictorConfig(depth=1, width=16))
    rejects(sampler.check_model, model, f"sampler {sampler.registry_name} integrates a flow-matching velocity "
                                        "that predictor 'transformer' does not give")


def test_pair_wise_rejects_the_trajectory_predictor():
    model = NTMConfig(predictor=TrajectoryPredictorConfig(depth=1, width=16))
    rejects(PairWiseConfig().check_model, model, "pair-wise needs a Markov predictor")


def test_compatible_combinations_pass():
    FlowMatchingConfig().check_model(FLOW_MATCHING_MODEL)
    for name in SAMPLERS.names():
        SAMPLERS.get(name).config_cls().check_model(FLOW_MATCHING_MODEL)
    PairWiseConfig().check_model(NTMConfig())
    EndToEndConfig().check_model(NTMConfig(predictor=TrajectoryPredictorConfig(depth=1, width=16)))
    AncestralConfig().check_model(NTMConfig(predictor=TrajectoryPredictorConfig(depth=1, width=16)))
    assert VELOCITY.gives_velocity() and not TransformerPredictorConfig().gives_velocity()
