"""A run written before a config field existed still resumes, is reused by the bench, and samples."""

from __future__ import annotations

from ntm.experiments.build import train_job, upgrade_saved_config
from ntm.experiments.presets import PRESETS
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from ntm.train.loop import train


def _tiny(run_dir, steps, checkpoint_format="dcp"):
    exp = PRESETS["toy-ntm"]
    return exp.replace(run_dir=str(run_dir), model=exp.model.replace(
        transporter=exp.model.transporter.replace(width=16, num_heads=2, layers_per_block=1),
        predictor=exp.model.predictor.replace(width=16, depth=1, num_heads=2)),
        train=exp.train.replace(steps=steps, warmup_steps=0, sample_every=0, checkpoint_every=2, device="cpu",
                                checkpoint_format=checkpoint_format),
        eval=exp.eval.replace(num_examples=64))


def _drop(config: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        config = config[key]
    del config[leaf]


def test_upgrade_fills_fields_added_since_at_their_defaults():
    exp = _tiny("/tmp/unused", 2)
    current = exp.model_dump(mode="json")
    old = exp.model_dump(mode="json")
    _drop(old, "model.transporter.deep_layers")
    _drop(old, "train.lr_scale")
    assert old != current and upgrade_saved_config(old) == current
    assert upgrade_saved_config({"model": "not a config"}) == {"model": "not a config"}  # returned as saved


def test_a_checkpoint_written_before_a_new_field_resumes(tmp_path):
    data = PRESETS["toy-ntm"].data.build()
    run_dir = tmp_path / "run"
    train(train_job(_tiny(run_dir, 2, "file"), data))  # a single file, as versions without the field wrote
    manager = CheckpointManager(run_dir / "checkpoints")
    path = manager.latest_path()
    state = load_checkpoint(path)
    _drop(state["config"], "model.transporter.deep_layers")  # as written by a version without the field
    _drop(state["config"], "train.checkpoint_format")
    save_checkpoint(path, state)
    result = train(train_job(_tiny(run_dir, 4), data, resume=True))  # resumed into checkpoint directories
    assert result.steps == 4 and manager.latest_path().name == "step_00000004"
