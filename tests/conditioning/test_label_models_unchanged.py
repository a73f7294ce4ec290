"""Class-label and unconditional models are exactly what they were before conditions could be captions.

``BEFORE`` was recorded at commit 25d9cb4 (before the ``conditioner`` slot
could carry captions): for each preset, ``torch.manual_seed(0)`` then
``build_model(exp, data)``; the number of state-dict entries, a digest of
their names and shapes in order, a digest of their values (so the modules are
built in the same order from the same random draws), the parameter groups and
the FSDP units. The loss curves themselves are guarded by
``tests/train/test_golden_curves.py``.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from ntm.experiments.build import build_model, dims_for
from ntm.experiments.presets import PRESETS
from ntm.denoisers import LearnedDenoiserConfig
from ntm.spec import ModelDims

BEFORE = {
    "toy-ntm": (115, "0e47ca5123e8f9c0", "6d7b75a01656eff8", {"transporter": 60, "predictor": 55}, 8),
    "digits-ntm": (117, "ca5313504ea8489a", "81f2caa10afcd6ec", {"transporter": 61, "predictor": 56}, 8),
    "digits-flow-matching": (52, "fc284604e04e4e82", "b610806c08be9a02", {"transporter": 0, "backbone": 52}, 4),
    "digits-finetune": (207, "553730d4f5aa026e", "583bc6357f5c45ad",
                        {"transporter": 61, "backbone": 72, "scale": 2}, 16),
    "toy-gaussian": (55, "601c1636388348f0", "29a35a04e660dbb9", {"transporter": 0, "predictor": 55}, 4),
}
DENOISER_BEFORE = (32, "34104331b9df5491", "0434c86adccb10ae")
"""``torch.manual_seed(0)``; ``LearnedDenoiserConfig(width=32, depth=2).network(ModelDims(16, 4, 10))``."""


def digests(module: torch.nn.Module) -> tuple[int, str, str]:
    names, values = hashlib.sha256(), hashlib.sha256()
    state = module.state_dict()
    for key, tensor in state.items():
        names.update(f"{key}:{tuple(tensor.shape)};".encode())
        values.update(tensor.detach().contiguous().numpy().tobytes())
    return len(state), names.hexdigest()[:16], values.hexdigest()[:16]


@pytest.mark.parametrize("name", list(BEFORE))
def test_preset_models_build_the_same_modules_from_the_same_draws(name):
    exp = PRESETS[name]
    data = exp.data.build()
    torch.manual_seed(0)
    model = build_model(exp, data)
    count, names, values, groups, units = BEFORE[name]
    assert digests(model) == (count, names, values)
    assert {g: len(p) for g, p in model.param_groups().items()} == groups
    assert len(model.shard_units()) == units
    assert model.condition_encoder is None and dims_for(exp, data).cond_dim == dims_for(exp, data).cond_len == 0


@pytest.mark.parametrize("name", ["digits-ntm", "toy-ntm", "digits-flow-matching"])
def test_the_old_config_path_builds_the_same_state_dict(name):
    """``exp.model.build(ModelDims(N, d, num_classes))`` (how models were built) == ``build_model(exp, data)``."""
    exp = PRESETS[name]
    data = exp.data.build()
    dims = dims_for(exp, data)
    conditional = exp.conditioner.registry_name != "none"
    old_dims = ModelDims(dims.num_tokens, dims.token_dim, data.spec.num_classes if conditional else 0)
    assert dims == old_dims
    torch.manual_seed(0)
    old = exp.model.build(old_dims)
    torch.manual_seed(0)
    new = build_model(exp, data)
    assert list(old.state_dict()) == list(new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_learned_denoiser_network_is_unchanged():
    torch.manual_seed(0)
    assert digests(LearnedDenoiserConfig(width=32, depth=2).network(ModelDims(16, 4, 10))) == DENOISER_BEFORE
