"""Meta-device init (``train.meta_init``) re-draws exactly the eager initial weights, for every registered component.

A build on the meta device, materialized with ``to_empty`` and re-drawn by :func:`ntm.nn.init.reset` with the
same seed, must equal the ordinary build bitwise (:func:`ntm.testing.check_meta_init`): every transporter (its
conformance configs, with class labels and with an encoded text condition), every predictor (tiny defaults) and
output head, the small-text condition encoder, and whole models with it. One process, no process group; the
sharded version runs in ``test_fsdp_features.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntm import testing
from ntm.forward import MarkovConfig
from ntm.forward.schedules import ExplicitConfig, ShiftedConfig
from ntm.model import NTMConfig
from ntm.nn.init import ResetError, reset
from ntm.predictors import HEADS, PREDICTORS, PosteriorPredictorConfig
from ntm.spec import ModelDims
from ntm.transporters import TRANSPORTERS
from ntm.registry import ComponentConfig

LABELS = ModelDims(4, 2, 3)
TINY = {"depth": 2, "width": 16, "num_heads": 2}


def shrink(config: ComponentConfig) -> ComponentConfig:
    """``config`` with every ``depth`` / ``width`` / ``num_heads`` field (recursively) set to :data:`TINY`."""
    updates = {k: TINY[k] if k in TINY else shrink(getattr(config, k))
               for k in type(config).model_fields if k in TINY or isinstance(getattr(config, k), ComponentConfig)}
    return config.replace(**updates) if updates else config


TRANSPORTER_CASES = [
    pytest.param(config, dims, id=f"{name}-{i}-{label}")
    for name in TRANSPORTERS.names()
    for i, config in enumerate(TRANSPORTERS.get(name).config_cls.conformance_configs())
    for label, dims in (("labels", LABELS), ("text", testing.TEXT_DIMS))
]


@pytest.mark.parametrize("config, dims", TRANSPORTER_CASES)
def test_every_transporter_replays_its_initialisation(config, dims):
    testing.check_meta_init(lambda: config.build(dims), f"transporter {config!r}")


PREDICTOR_CASES = [
    *(pytest.param(shrink(PREDICTORS.get(name).config_cls()), id=name) for name in PREDICTORS.names()),
    *(pytest.param(shrink(PREDICTORS.get("transformer").config_cls()).replace(head=HEADS.get(head).config_cls()),
                   id=f"head-{head}") for head in HEADS.names()),
    pytest.param(shrink(PosteriorPredictorConfig()).replace(learned_scale=True, reference=True),
                 id="posterior-scale-reference"),
]


@pytest.mark.parametrize("config", PREDICTOR_CASES)
@pytest.mark.parametrize("dims", [LABELS, testing.TEXT_DIMS], ids=["labels", "text"])
def test_every_predictor_replays_its_initialisation(config, dims):
    testing.check_meta_init(lambda: config.build(dims), f"predictor {config!r}")


@pytest.mark.parametrize("index", range(len(testing.tiny_model_configs())))
def test_whole_models_with_a_text_encoder_replay_theirs(index):
    """The condition encoder is built before the model (an argument of ``NTMConfig.build``): it re-draws first."""
    config, conditioner = testing.tiny_model_configs()[index], testing.text_conditioner()
    dims = testing.text_model_dims(conditioner)
    testing.check_meta_init(lambda: config.build(dims, condition_encoder=conditioner.encoder(dims)), f"model {index}")


def test_a_module_that_cannot_redraw_is_named():
    class Plugin(nn.Module):  # a parameter of its own, no reset_parameters()
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(2, 2), nn.ModuleDict({"head": Plugin()}))
    meta.to_empty(device="cpu")
    with pytest.raises(ResetError, match=r"^1\.head \(Plugin\) holds scale of its own but defines no reset_parameters"):
        reset(meta)


def test_schedules_build_and_check_under_a_meta_default_device():
    """Building a model on the meta device builds its process; schedule times stay on the CPU, checked."""
    with torch.device("meta"):
        process = MarkovConfig(schedule=ShiftedConfig(), steps=(2, 4)).build()
        explicit = MarkovConfig(schedule=ExplicitConfig(times=(0.1, 0.5, 1.0)), steps=(2,)).build()
        model = NTMConfig().build(LABELS)
    assert process.times(4).device.type == "cpu" and explicit.times(2).tolist() == pytest.approx([0.1, 0.5, 1.0])
    assert all(p.is_meta for p in model.parameters())
