"""Named parameter groups: components declare them, the loop scales, freezes and checks them; the init hook."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ntm.experiments.autoencoder import AE_PRESETS
from ntm.experiments.build import build_model
from ntm.experiments.training import parse_experiment
from ntm.experiments.presets import PRESETS
from ntm.conditioning import NoConditionConfig
from ntm.data import EightGaussiansConfig
from ntm.data.base import DataSpec
from ntm.losses.nll import EndToEndLoss
from ntm.model import NTM, NTMConfig
from ntm.nn.tokens import TokenLayout
from ntm.predictors import TransformerPredictorConfig
from ntm.predictors.posterior import (
    PosteriorPredictor,
    PosteriorPredictorConfig,
    VelocityTransformerConfig,
)
from ntm.spec import ModelDims
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from ntm.train.config import TrainConfig
from ntm.train.errors import TrainingError
from ntm.train.loop import TrainJob, train
from ntm.train.optim import param_group_names
from ntm.transporters import IdentityConfig, TarFlowConfig

TINY_TARFLOW = TarFlowConfig(width=16, num_heads=2, num_blocks=1, layers_per_block=1)
TINY_POSTERIOR = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=1, width=16, num_heads=2),
                                          learned_scale=True)
LR = 1e-2


GPU_PRESETS = ("imagenet-paper", "imagenet64-pixels", "t2i-paper")


def _as_model_sees_it(exp, spec: DataSpec) -> DataSpec:
    """``spec`` for a pixel preset; for a latent one, the latents of the autoencoder its autoencoder.path names
    (runs/digits-ae -> the digits-ae preset's downsampling and latent channels; no weights needed)."""
    if exp.autoencoder.is_identity:
        return spec
    ae = AE_PRESETS[Path(exp.autoencoder.path).name].autoencoder
    _, h, w = spec.shape
    return dataclasses.replace(spec, shape=(ae.latent_channels, h // ae.downsample, w // ae.downsample),
                               encoded_by="an autoencoder", image_shape=spec.shape)


def _preset_model(preset: str) -> nn.Module:
    exp = PRESETS[preset]
    if preset in GPU_PRESETS:  # same components at toy widths; the data's shape, no shards
        model = exp.model.replace(
            transporter=exp.model.transporter.replace(width=32, num_heads=4),
            predictor=exp.model.predictor.replace(depth=2, width=32, num_heads=4),
        )
        c = exp.data
        spec = DataSpec(shape=(c.channels, c.image_size, c.image_size), num_classes=c.num_classes, kind="images")
        spec = _as_model_sees_it(exp, spec)
        if preset == "t2i-paper":  # captions; the frozen text tower random (its weights file is not here)
            spec = SimpleNamespace(**vars(spec), captions=True)
            exp = exp.replace(conditioner=exp.conditioner.replace(weights=None))
        return build_model(exp.replace(model=model), SimpleNamespace(spec=spec))
    data = exp.data.build()
    if not exp.autoencoder.is_identity:  # the data as the model sees it, without the autoencoder's weights
        data = SimpleNamespace(spec=_as_model_sees_it(exp, data.spec), eval_batches=data.eval_batches,
                               train_batches=data.train_batches)
    return build_model(exp, data)


def _trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_groups_partition_every_presets_trainable_parameters(preset: str) -> None:
    model = _preset_model(preset)
    groups = param_group_names(model)  # raises unless a partition
    encoder = ["condition_encoder"] if getattr(model, "condition_encoder", None) is not None else []
    if isinstance(model.predictor, PosteriorPredictor):
        expected = ["transporter", "backbone"] + (["scale"] if model.predictor.scale is not None else [])
    else:
        expected = ["transporter", "predictor"]
    assert list(groups) == expected + encoder
    names = [n for group in groups.values() for n in group]
    assert sorted(names) == sorted(_trainable(model)) and len(names) == len(set(names))


@pytest.mark.parametrize("preset, tokens, token_dim", [
    ("imagenet-paper", 256, 32 * 2 * 2),  # 32 x 32x32 latents of imagenet-ae, patch 2 (the paper's 256 tokens)
    ("imagenet64-pixels", 256, 3 * 4 * 4),  # 3 x 64x64 pixels, patch 4
    ("digits-latent-ntm", 4, "digits-ae"),  # c x 4x4 latents of digits-ae, patch 2
    ("shapes-latent-ntm", 16, "shapes-ae"),  # c x 8x8 latents of shapes-ae, patch 2
])
def test_the_paper_and_latent_presets_token_geometry(preset: str, tokens: int, token_dim: int | str) -> None:
    if isinstance(token_dim, str):  # c x 2x2 values per token, c the latent channels of that autoencoder preset
        token_dim = AE_PRESETS[token_dim].autoencoder.latent_channels * 2 * 2
    dims = _preset_model(preset).dims
    assert (dims.num_tokens, dims.token_dim) == (tokens, token_dim)


def test_the_posterior_predictor_groups_its_backbone_and_scale_head_and_leaves_frozen_parameters_out() -> None:
    dims = ModelDims(num_tokens=2, token_dim=1)
    model = NTMConfig(transporter=TINY_TARFLOW, predictor=TINY_POSTERIOR).build(dims)
    groups = param_group_names(model)
    assert list(groups) == ["transporter", "backbone", "scale"]
    assert all(n.startswith("predictor.xhat.") for n in groups["backbone"])
    assert sorted(groups["scale"]) == ["predictor.scale.bias", "predictor.scale.weight"]
    assert sorted(n for g in groups.values() for n in g) == sorted(_trainable(model))

    model.predictor.extra = nn.Linear(2, 2)  # another trainable submodule goes to "predictor"
    model.predictor.xhat.net.requires_grad_(False)  # frozen parameters are in no group
    groups = param_group_names(model)
    assert groups["backbone"] == [] and sorted(groups["predictor"]) == ["predictor.extra.bias", "predictor.extra.weight"]
    assert sorted(n for g in groups.values() for n in g) == sorted(_trainable(model))

    plain = NTMConfig(transporter=IdentityConfig(), predictor=TINY_POSTERIOR.replace(learned_scale=False)).build(dims)
    assert list(param_group_names(plain)) == ["transporter", "backbone"]  # identity: an empty "transporter"


def test_a_model_without_param_groups_is_one_group_of_its_trainable_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[1].bias.requires_grad_(False)
    assert param_group_names(model) == {"all": ["0.weight", "0.bias", "1.weight"]}


@pytest.mark.parametrize("bad, message", [
    (lambda m: {"a": [m[0].weight], "b": [m[0].weight, m[0].bias]}, "0.weight is in group 'a' and in group 'b'"),
    (lambda m: {"a": [m[0].weight]}, "trainable parameters in no group: 0.bias"),
    (lambda m: {"a": [*m[0].parameters(), nn.Parameter(torch.zeros(1))]}, "group 'a' holds a parameter that is not"),
    (lambda m: {"a": [*m.parameters(), m[1].weight]}, "group 'a' holds the frozen parameter 1.weight"),
])
def test_groups_that_are_no_partition_are_refused(bad, message: str) -> None:
    class Declaring(nn.Sequential):
        def param_groups(self):
            return bad(self)

    model = Declaring(nn.Linear(2, 3), nn.Linear(3, 1, bias=False))
    model[1].weight.requires_grad_(False)
    with pytest.raises(TrainingError, match=message):
        param_group_names(model)


def test_a_group_name_declared_by_both_components_is_a_value_error() -> None:
    model = NTMConfig(transporter=TINY_TARFLOW, predictor=TransformerPredictorConfig(depth=1, width=16, num_heads=2))
    ntm = model.build(ModelDims(num_tokens=2, token_dim=1))
    ntm.transporter.param_groups = lambda: {"predictor": list(ntm.transporter.parameters())}
    with pytest.raises(ValueError, match="group 'predictor' is declared by both the transporter"):
        NTM.param_groups(ntm)


# -- the loop -------------------------------------------------------------------------------
def _job(run_dir: Path, initialize=None, resume: bool = False, **train_fields) -> TrainJob:
    data = EightGaussiansConfig().build()
    layout = TokenLayout(data.spec.shape)
    model = NTMConfig(transporter=TINY_TARFLOW, predictor=TINY_POSTERIOR)
    cfg = TrainConfig(**{"steps": 4, "batch_size": 16, "lr": LR, "warmup_steps": 2, "log_every": 1, "sample_every": 0,
                         "checkpoint_every": 2, "keep_checkpoints": 5, "device": "cpu", **train_fields})
    return TrainJob(
        build_model=lambda: model.build(ModelDims(layout.num_tokens, layout.token_dim)),
        objective=EndToEndLoss(),
        data=data,
        layout=layout,
        conditioner=NoConditionConfig().build(),
        train=cfg,
        run_dir=run_dir,
        config={"train": cfg.model_dump(mode="json")},
        resume=resume,
        initialize=initialize,
    )


def _logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(run_dir: Path, step: int) -> dict:
    return load_checkpoint(CheckpointManager(run_dir / "checkpoints").path_for(step))


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _initial(job: TrainJob) -> dict[str, torch.Tensor]:
    torch.manual_seed(job.train.seed)
    return _parameters(job.build_model())


def _group_of(name: str) -> str:
    return {"transporter": "transporter", "predictor.scale": "scale", "predictor.xhat": "backbone"}[
        name.split(".")[0] if name.startswith("transporter") else ".".join(name.split(".")[:2])]


def test_each_groups_learning_rate_is_its_scale_times_the_schedule(tmp_path: Path) -> None:
    train(_job(tmp_path / "plain"))
    train(_job(tmp_path / "scaled", lr_scale={"backbone": 0.1, "scale": 10.0}))
    plain, scaled = _logged(tmp_path / "plain"), _logged(tmp_path / "scaled")
    assert "lr/backbone" not in plain[0]
    for p, s in zip(plain, scaled):
        assert s["lr"] == pytest.approx(p["lr"], rel=1e-12)
        assert s["lr/transporter"] == pytest.approx(p["lr"], rel=1e-12)
        assert s["lr/backbone"] == pytest.approx(0.1 * p["lr"], rel=1e-12)
        assert s["lr/scale"] == pytest.approx(10.0 * p["lr"], rel=1e-12)
    assert plain[1]["lr"] == pytest.approx(LR)  # the warm-up's end: the peak
    groups = _state(tmp_path / "scaled", 4)["optimizer"]["param_groups"]
    assert {g["name"]: g["lr"] for g in groups} == {k.removeprefix("lr/"): v for k, v in scaled[-1].items() if "lr/" in k}


def test_a_frozen_group_stays_bit_identical_for_its_freeze_steps_then_moves(tmp_path: Path) -> None:
    job = _job(tmp_path / "run", freeze_steps={"backbone": 2})
    initial = _initial(job)
    train(job)
    at_2, at_4 = _state(tmp_path / "run", 2), _state(tmp_path / "run", 4)
    for name, value in initial.items():
        if _group_of(name) == "backbone":
            assert torch.equal(at_2["model"][name], value), name
            assert torch.equal(at_2["ema"]["shadow"][name], value.float()), name
    moved = lambda state, group: [n for n in initial if _group_of(n) == group and not torch.equal(state["model"][n], initial[n])]
    assert moved(at_2, "transporter") and moved(at_2, "scale")
    assert moved(at_4, "backbone")
    lrs = [line["lr/backbone"] for line in _logged(tmp_path / "run")]
    assert lrs[0] == 0.0 and lrs[1] > 0  # logged after step 1: still frozen at step index 1; then the schedule
    assert lrs[1] == pytest.approx(_logged(tmp_path / "run")[1]["lr"])  # no second warm-up


def test_a_per_group_schedule_resumes_on_the_identical_curve(tmp_path: Path) -> None:
    fields = {"lr_scale": {"backbone": 0.5}, "freeze_steps": {"transporter": 3}}
    train(_job(tmp_path / "straight", **fields))
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")  # as if killed right after step 2's checkpoint
    CheckpointManager(tmp_path / "resumed" / "checkpoints").remove(4)
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    train(_job(tmp_path / "resumed", resume=True, **fields))
    straight, resumed = _logged(tmp_path / "straight"), _logged(tmp_path / "resumed")
    for line in straight + resumed:
        line.pop("time"), line.pop("examples_per_s")
    assert resumed == straight
    final_a, final_b = _state(tmp_path / "straight", 4), _state(tmp_path / "resumed", 4)
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    assert final_a["scheduler"] == final_b["scheduler"]


def test_a_checkpoint_from_before_the_group_settings_resumes(tmp_path: Path) -> None:
    train(_job(tmp_path / "run", steps=2, checkpoint_format="file"))  # a single file, as runs of that time wrote
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    state = load_checkpoint(manager.latest_path())
    for key in ("lr_scale", "freeze_steps"):
        del state["config"]["train"][key]
    save_checkpoint(manager.latest_path(), state)
    assert train(_job(tmp_path / "run", resume=True)).steps == 4


def test_an_unknown_group_name_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as err:
        train(_job(tmp_path / "run", lr_scale={"bakcbone": 0.1}, freeze_steps={"predictor": 3}))
    assert str(err.value) == ("train.lr_scale names unknown parameter group 'bakcbone'; train.freeze_steps names "
                              "unknown parameter group 'predictor'; the model's groups: transporter, backbone, scale")
    assert not (tmp_path / "run").exists()


def test_group_settings_parse_from_the_command_line() -> None:
    exp = parse_experiment(["toy-ntm", "--train.lr-scale", "backbone", "0.1", "scale", "10",
                            "--train.freeze-steps", "backbone", "500"]).experiment
    assert exp.train.lr_scale == {"backbone": 0.1, "scale": 10.0} and exp.train.freeze_steps == {"backbone": 500}
    assert hash(exp.train) == hash(exp.train.replace())
    with pytest.raises(TypeError, match="read-only"):
        exp.train.lr_scale["backbone"] = 1.0


def test_the_init_hook_sets_the_fresh_models_raw_and_ema_weights_and_is_skipped_on_resume(tmp_path: Path) -> None:
    torch.manual_seed(123)
    other = _job(tmp_path).build_model().state_dict()
    weights = {n: other[n] for n in _initial(_job(tmp_path))}
    calls = []

    def initialize(model: nn.Module) -> None:
        calls.append(model)
        model.load_state_dict(other)

    frozen = {"transporter": 1, "backbone": 1, "scale": 1}  # step 0 changes nothing
    train(_job(tmp_path / "run", initialize, steps=1, freeze_steps=frozen))
    assert len(calls) == 1
    state = _state(tmp_path / "run", 1)
    for name, value in weights.items():
        assert torch.equal(state["model"][name], value), name
        assert torch.equal(state["ema"]["shadow"][name], value.float()), name

    train(_job(tmp_path / "run", initialize, steps=2, resume=True, freeze_steps=frozen))
    assert len(calls) == 1
