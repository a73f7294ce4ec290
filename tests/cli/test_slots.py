"""Every ``slot:name`` on the command line is exactly that variant, for every slot and every registered name.

Slots and names come from the registries themselves, so a variant is covered
the moment it registers. The preset's own variant keeps the preset's values;
any other variant starts from its class defaults.
"""

from __future__ import annotations

import json

import pydantic
import pytest
import tyro

from ntm.experiments.cli import main
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.registry import registry_slots
from ntm.registry.cli import check_slot_tokens, cli_path, cli_type, to_data

PRESET_NAMES = ["toy-ntm", "digits-ntm"]  # a Markov and a trajectory predictor (whose config subclasses the former)


def _get(data, path: str):
    for part in path.split("."):
        data = data[part] if isinstance(data, dict) else getattr(data, part)
    return data


def _parents(path: str, slots: dict) -> list[str]:
    """Tokens selecting, for each enclosing slot, a variant that has the next field (e.g. predictor:posterior)."""
    tokens = []
    parts = path.split(".")
    for i in range(1, len(parts)):
        outer = ".".join(parts[:i])
        if outer in slots:
            field = parts[i]
            entry = next(e for e in slots[outer].entries() if field in e.config_cls.model_fields)
            tokens.append(f"{cli_path(Experiment, outer)}:{entry.name}")
    return tokens


def _cases():
    slots = registry_slots(Experiment)
    for preset in PRESET_NAMES:
        for path, registry in slots.items():
            for entry in registry.entries():
                yield pytest.param(preset, path, entry.name, id=f"{preset}-{cli_path(Experiment, path)}:{entry.name}")


@pytest.mark.parametrize("preset, path, name", list(_cases()))
def test_slot_name_parses_to_exactly_that_variant(preset, path, name):
    slots = registry_slots(Experiment)
    registry = slots[path]
    entry = registry.get(name)
    tokens = check_slot_tokens(Experiment, [*_parents(path, slots), f"{cli_path(Experiment, path)}:{name}"])
    mirror, default = cli_type(Experiment, PRESETS[preset])
    try:
        expected_default = entry.config_cls()
    except pydantic.ValidationError:
        expected_default = None  # a variant with required fields: the command line must ask for them
    if expected_default is None:
        with pytest.raises(SystemExit):
            tyro.cli(tyro.conf.CascadeSubcommandArgs[mirror], default=default, args=tokens, console_outputs=False)
        return
    parsed = to_data(tyro.cli(tyro.conf.CascadeSubcommandArgs[mirror], default=default, args=tokens))
    value = registry.load(_get(parsed, path))
    assert type(value) is entry.config_cls
    try:
        in_preset = _get(PRESETS[preset], path)
    except (AttributeError, KeyError):
        in_preset = None  # the enclosing variant was switched: the slot did not exist in the preset
    if type(in_preset) is entry.config_cls:
        assert value == in_preset  # the preset's values are kept
    else:
        assert value == expected_default  # class defaults


def test_transformer_on_digits_is_the_markov_transformer_with_its_class_defaults(capsys):
    assert main(["train", "digits-ntm", "predictor:transformer", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["predictor"] == {"name": "transformer", "depth": 6, "width": 128, "num_heads": 4,
                                              "mlp_ratio": 4.0, "head": {"name": "gaussian",
                                                                         "parameterization": "posterior",
                                                                         "sigma": "learned"},
                                              "positions": "learned", "grid": None, "num_kv_heads": None,
                                              "time": "adaln", "text": "cross-attention"}
    # the documented ablation runs: the Markov transformer with pair-wise training
    assert main(["train", "digits-ntm", "predictor:transformer", "loss:pair-wise", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == {"name": "pair-wise"}


def test_trajectory_on_digits_keeps_the_preset_values(capsys):
    assert main(["train", "digits-ntm", "predictor:trajectory", "--predictor.width", "32", "--dry-run"]) == 0
    predictor = json.loads(capsys.readouterr().out)["model"]["predictor"]
    assert predictor["name"] == "trajectory" and predictor["depth"] == 4 and predictor["width"] == 32


def test_help_shows_the_true_default(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "digits-ntm", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: predictor:trajectory)" in out and "(default: predictor:transformer)" not in out


def test_dry_run_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "never"
    assert main(["train", "toy-ntm", "--run-dir", str(run_dir), "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert Experiment.model_validate(resolved).run_dir == str(run_dir)
    assert not run_dir.exists()
