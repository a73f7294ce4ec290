"""``init`` is a slot like the others: every ``slot:variant`` that ``ntm train --help`` lists is accepted, and
``init:run --init.path RUN`` starts a run from RUN's sampling weights."""

from __future__ import annotations

import re

import pytest
import torch

from ntm.experiments.build import build_model, data_for
from ntm.experiments.cli import main
from ntm.experiments.config import Experiment
from ntm.experiments.training import parse_experiment
from ntm.registry import RegistryError
from ntm.registry.cli import check_slot_tokens
from ntm.train.checkpoint import CheckpointManager, read_sampling_state, sampling_state_dict
from ntm.train.init import initialize_from


def test_every_listed_variant_is_accepted(capsys):
    with pytest.raises(SystemExit):
        main(["train", "toy-ntm", "--help"])
    listed = set(re.findall(r"• ([a-z][\w.-]*:[\w.-]+)", capsys.readouterr().out))
    assert {"init:none", "init:run", "transporter:tarflow"} <= listed
    for token in sorted(listed):
        check_slot_tokens(Experiment, [token])  # raises on a slot or variant it does not know


def test_an_unknown_init_variant_names_both(capsys):
    with pytest.raises(RegistryError, match=r"init:none or init:run"):
        check_slot_tokens(Experiment, ["init:teacher"])


SMALL = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1"]


def test_init_run_copies_every_weight_of_the_source(tmp_path):
    source = tmp_path / "source"
    assert main(["train", "toy-ntm", *SMALL, "--run-dir", str(source), "--train.steps", "2", "--train.warmup-steps",
                 "0", "--train.sample-every", "0", "--eval.num-examples", "8"]) == 0
    exp = parse_experiment(["toy-ntm", "init:run", "--init.path", str(source), *SMALL, "--run-dir", str(tmp_path / "b")])
    assert exp.experiment.init is not None and exp.experiment.init.mapping == {}
    model = build_model(exp.experiment, data_for(exp.experiment))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    initialize_from(model, exp.experiment.init)
    latest = CheckpointManager(source / "checkpoints").latest_path()
    want = sampling_state_dict(read_sampling_state(latest, "ema"), "ema")
    got = model.state_dict()
    assert set(want) <= set(got)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(fresh[k], want[k]) for k in want)  # the copy changed something


def test_init_run_needs_a_path(capsys):
    assert main(["train", "toy-ntm", "init:run", "--dry-run"]) == 2
    assert "--init.path" in capsys.readouterr().err
