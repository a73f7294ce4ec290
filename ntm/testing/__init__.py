"""The conformance suite, installed: plain checks of every component contract, for this repo and for plugins.

A plugin that registers a transporter, predictor, sampler, data source or
loss in its own package runs the same checks the project runs on its own
variants, one line per component::

    from ntm.testing import check_data_source, check_predictor, check_sampler, check_transporter

    def test_my_flow():
        check_transporter(MyFlowConfig(width=16))

Each ``check_*`` builds small float64 problems, perturbs weights by
``scale * N(0, 1)`` away from their (often identity) initialisation, and
raises ``AssertionError`` with a message naming the component, the problem
and the violated property. Nothing here imports pytest or hypothesis; the
finer per-property functions take the problem (dims, batch, seed, scale)
as keywords, so property-based tests can draw them.
"""

from ntm.testing._util import perturb_, rel_err, seeded
from ntm.testing.conditions import TEXT_DIMS, condition_inputs, random_condition
from ntm.testing.data import check_batch, check_data_source, check_spec
from ntm.testing.init import check_meta_init
from ntm.testing.losses import check_loss, default_loss_model
from ntm.testing.mixture_posterior import MixtureReversePredictor
from ntm.testing.models import (
    MODEL_DIMS,
    accepted_model,
    build_model,
    build_text_model,
    text_conditioner,
    text_model_dims,
    tiny_model_configs,
)
from ntm.testing.predictors import (
    PREDICTOR_DIMS,
    build_predictor,
    check_predictor,
    check_predictor_causality,
    check_predictor_outputs,
    check_predictor_trajectory,
    predictor_inputs,
)
from ntm.testing.samplers import check_sampler, default_sampler_model
from ntm.testing.transporters import (
    TRANSPORTER_CASES,
    TransporterCase,
    build_transporter,
    check_transporter,
    check_transporter_identity_at_init,
    check_transporter_inverse_methods,
    check_transporter_logdet,
    check_transporter_round_trip,
    transporter_inputs,
)

__all__ = [
    "MODEL_DIMS", "MixtureReversePredictor", "PREDICTOR_DIMS", "TEXT_DIMS", "TRANSPORTER_CASES", "TransporterCase", "accepted_model",
    "build_model", "build_predictor", "build_text_model", "build_transporter", "check_batch", "check_data_source",
    "check_loss", "check_meta_init", "check_predictor", "check_predictor_causality", "check_predictor_outputs",
    "check_predictor_trajectory", "check_sampler", "check_spec", "check_transporter",
    "check_transporter_identity_at_init", "check_transporter_inverse_methods", "check_transporter_logdet",
    "check_transporter_round_trip", "condition_inputs", "default_loss_model", "default_sampler_model", "perturb_",
    "predictor_inputs", "random_condition", "rel_err", "seeded", "text_conditioner", "text_model_dims",
    "tiny_model_configs", "transporter_inputs",
]
