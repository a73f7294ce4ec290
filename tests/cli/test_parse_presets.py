"""``ntm train PRESET ...`` builds only that preset's command-line mirror: it parses to exactly what the whole
choice of presets parses to, and ``--help`` still lists every preset."""

from __future__ import annotations

import pytest

from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.registry.cli import parse


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_named_preset_parses_to_itself(preset):
    assert parse(Experiment, [preset], presets=PRESETS) == PRESETS[preset]


def test_flags_and_slots_after_the_preset_apply_to_it():
    exp = parse(Experiment, ["digits-ntm", "predictor:transformer", "--train.steps", "7"], presets=PRESETS)
    assert exp.train.steps == 7 and type(exp.model.predictor).__name__ == "TransformerPredictorConfig"
    assert exp.data == PRESETS["digits-ntm"].data


def test_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit):
        parse(Experiment, ["--help"], presets=PRESETS, prog="ntm train")
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
