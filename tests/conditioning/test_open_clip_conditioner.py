"""conditioner:open-clip: a local open_clip text tower (a tiny config registered here, random weights saved to a
temporary file), its features against open_clip's own, the frozen tower (no gradients, no parameter group, not
saved, the feature cache), training through the loop, guidance, the conformance kit, and bad input via the CLI."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ntm.experiments.build import build_model, train_job
from ntm.experiments.cli import main
from ntm.experiments.presets import PRESETS
from ntm import testing
from ntm.conditioning import CONDITIONERS, NULL_TOKEN, Condition, OpenClipTextConfig
from ntm.conditioning.open_clip_text import tower_spec
from ntm.data.base import Batch, DataSource, DataSpec
from ntm.forward import MarkovConfig, UniformConfig
from ntm.losses import EndToEndConfig
from ntm.model import NTMConfig
from ntm.predictors import TrajectoryPredictorConfig
from ntm.samplers import AncestralConfig
from ntm.samplers.guidance import guidance_conditions
from ntm.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, load_sampling_weights
from ntm.train.config import TrainConfig
from ntm.train.ema import EMA
from ntm.train.loop import train
from ntm.transporters import TarFlowConfig

open_clip = pytest.importorskip("open_clip")

TINY = "ntm-test-tiny-clip"
TINY_CUSTOM = "ntm-test-tiny-clip-custom-text"  # the same tower saved under "text." (CustomTextCLIP)
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VISION = {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
CAPTIONS = ["a bright square", "a dark square", "a striped square", "a bright square on a dark ground", ""]


def save_weights(name: str, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The tiny config registered with open_clip, and two weights files of it (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("open-clip")
    for name, extra in ((TINY, {}), (TINY_CUSTOM, {"custom_text": True})):
        (root / f"{name}.json").write_text(json.dumps({"embed_dim": 16, "vision_cfg": VISION, "text_cfg": TEXT,
                                                       **extra}))
        open_clip.add_model_config(root / f"{name}.json")
    return {"root": root, "a": save_weights(TINY, root / "a.pt", 0), "b": save_weights(TINY, root / "b.pt", 1)}


def config(clip, weights: str = "a", **fields) -> OpenClipTextConfig:
    return OpenClipTextConfig(model=TINY, weights=str(clip[weights]), **{"dropout": 0.0, **fields})


def reference_model(clip, weights: str = "a"):
    model = open_clip.create_model(TINY, pretrained=None).eval()
    model.load_state_dict(torch.load(clip[weights]))
    return model


def tower_calls(encoder) -> list[int]:
    """The batch sizes of the encoder's tower calls from now on."""
    calls: list[int] = []
    encoder.text_tower().transformer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("conditioner:open-clip tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registered_with_its_fields_and_dims(clip):
    assert "open-clip" in CONDITIONERS.names()
    default = OpenClipTextConfig()
    assert (default.model, default.weights, default.frozen, default.dropout, default.context_length) == (
        "ViT-B-32", None, True, 0.1, None)
    assert OpenClipTextConfig.reads == default.build().reads == "caption"
    assert default.model_dims(10) == {"cond_dim": 512, "cond_len": 77}  # ViT-B-32's text tower, from its config
    assert "hf_model_name" not in tower_spec("ViT-B-32").text_cfg  # the default never downloads
    assert config(clip).model_dims(0) == {"cond_dim": 32, "cond_len": 16}
    assert config(clip, context_length=8).model_dims(0) == {"cond_dim": 32, "cond_len": 8}
    with pytest.raises(ValueError, match=r"conditioner.context_length: 20 exceeds the context length .* \(16\)"):
        config(clip, context_length=20).model_dims(0)


def test_local_weights_give_open_clips_text_features(clip, offline, capsys):
    """pooled is the end-of-text feature before text_projection: pooled @ text_projection = encode_text."""
    reference = reference_model(clip)
    captions = ["a red circle", "", "two blue squares left of a green triangle, a big red circle above a small "
                "yellow square", "x"]
    for cfg in (config(clip), config(clip, context_length=8), config(clip, frozen=False)):
        enc = cfg.encoder(None)
        ids = cfg.build().inputs(captions)
        c = enc(ids)
        assert isinstance(c, Condition) and c.tokens.shape == (4, cfg.model_dims(0)["cond_len"], 32)
        assert (ids[1] == NULL_TOKEN).all() and torch.equal(c.pooled[1], enc.null_pooled)
        real = [0, 2, 3]
        with torch.no_grad():
            expected = reference.encode_text(ids[real].clamp_min(0) if ids.shape[1] == 16 else
                                             torch.nn.functional.pad(ids[real], (0, 16 - ids.shape[1])))
        torch.testing.assert_close(c.pooled[real] @ reference.text_projection, expected, rtol=1e-5, atol=1e-5)
        end = ids.argmax(dim=1)
        for i in real:
            assert torch.equal(c.mask[i], torch.arange(ids.shape[1]) <= end[i])
            assert torch.equal(c.pooled[i], c.tokens[i, end[i]]) and not c.tokens[i, end[i] + 1:].any()
    assert capsys.readouterr().err.count("truncated to conditioner.context_length") == 3  # once per conditioner
    # a custom-text model's file (keys under "text.") loads the same tower
    custom = open_clip.create_model(TINY_CUSTOM, pretrained=None)
    custom.text.load_state_dict(reference_model(clip).state_dict(), strict=False)
    torch.save(custom.state_dict(), clip["root"] / "custom.pt")
    enc = OpenClipTextConfig(model=TINY_CUSTOM, weights=str(clip["root"] / "custom.pt")).encoder(None)
    ids = config(clip).build().inputs(captions)
    torch.testing.assert_close(enc(ids).tokens[real], config(clip).encoder(None)(ids).tokens[real], rtol=0, atol=1e-6)


def test_random_tower_is_reproducible_and_leaves_the_rng_alone():
    cfg = OpenClipTextConfig(model=TINY, dropout=0.0, cache_size=0)
    torch.manual_seed(5)
    a = cfg.encoder(None)
    after = torch.rand(1)
    torch.manual_seed(5)
    b = cfg.encoder(None)
    assert torch.equal(torch.rand(1), after)  # only the null parameters drew from the global RNG
    ids = cfg.build().inputs(["a red circle"])
    assert torch.equal(a(ids).tokens, b(ids).tokens) and torch.equal(a.tower_digest, b.tower_digest)


def test_frozen_tower_has_no_gradients_no_group_and_is_not_saved(clip):
    enc = config(clip).encoder(None)
    tower = enc.text_tower()
    assert not any(p.requires_grad for p in tower.parameters())
    assert [n for n, _ in enc.named_parameters()] == ["null_pooled", "null_token"]
    groups = enc.param_groups()
    assert list(groups) == ["condition_encoder"] and len(groups["condition_encoder"]) == 2
    assert groups["condition_encoder"][0] is enc.null_pooled and groups["condition_encoder"][1] is enc.null_token
    assert sorted(enc.state_dict()) == ["null_pooled", "null_token", "tower_digest"]
    assert sorted(EMA(enc).shadow) == ["null_pooled", "null_token"] and enc.shard_units() == []
    enc.train()
    ids = config(clip, dropout=0.5).build()(CAPTIONS * 4, 0, torch.Generator().manual_seed(0))
    c = enc(ids)
    (c.pooled.sum() + c.tokens.sum()).backward()
    assert not tower.training and all(p.grad is None for p in tower.parameters())
    assert enc.null_pooled.grad.abs().sum() > 0  # the learned null is trained through dropped rows
    # trained (frozen=False): the tower is a submodule in the group, sharded by blocks, and not cached
    trained = config(clip, frozen=False).encoder(None)
    assert trained.cache is None and len(trained.shard_units()) == 2
    group = trained.param_groups()["condition_encoder"]
    assert len(group) == len(list(trained.parameters())) > 2
    assert any(k.startswith("tower.transformer.") for k in trained.state_dict())
    trained(ids).pooled.sum().backward()
    assert trained.text_tower().token_embedding.weight.grad is not None


def test_feature_cache_per_caption_and_per_weights(clip):
    enc = config(clip).encoder(None)
    enc.cache.entries.clear()  # the cache of these weights is the process's: earlier tests filled it
    calls = tower_calls(enc)
    conditioner = config(clip).build()
    ids = conditioner.inputs(["a red circle", "a blue square", "a red circle", ""])
    first = enc(ids)
    assert calls == [2]  # the distinct real captions only, in one tower call
    again = enc(conditioner.inputs(["a blue square", "a red circle"]))
    assert calls == [2] and torch.equal(again.tokens, first.tokens[[1, 0]])  # cache hits, identical features
    enc(conditioner.inputs(["a red circle", "a green triangle"]))
    assert calls == [2, 1]
    # another encoder of the same weights shares the cache (e.g. the EMA model), even from a copy of the file
    shutil.copy(clip["a"], clip["root"] / "a-copy.pt")
    same = config(clip, weights="a").replace(weights=str(clip["root"] / "a-copy.pt")).encoder(None)
    same_calls = tower_calls(same)
    assert torch.equal(same(ids).tokens[:3], first.tokens[:3]) and same_calls == [] and same.cache is enc.cache
    # other weights: a cache of their own, other features
    other = config(clip, weights="b").encoder(None)
    other_calls = tower_calls(other)
    assert not torch.allclose(other(ids).tokens[0], first.tokens[0]) and other_calls == [2]
    assert other.cache is not enc.cache and other.identity != enc.identity
    # the cache is an LRU of bounded size (a fresh one: random weights of the tiny config)
    small = OpenClipTextConfig(model=TINY, dropout=0.0, cache_size=2).encoder(None)
    small.cache.entries.clear()
    small_calls = tower_calls(small)
    for caption in ("one", "two", "three", "three", "one"):
        small(conditioner.inputs([caption]))
    assert small_calls == [1, 1, 1, 1] and len(small.cache) == 2  # "one" was evicted by "three"
    # trained towers are never cached
    trained = config(clip, frozen=False).encoder(None)
    trained_calls = tower_calls(trained)
    trained(ids), trained(ids)
    assert trained_calls == [4, 4]


class Captioned(DataSource):
    """4x4 one-channel images, one pattern per caption (the empty caption: noise only)."""

    def __init__(self) -> None:
        self.spec = DataSpec(shape=(1, 4, 4), num_classes=0, kind="images")
        stripes = torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(4, 1)
        self.patterns = torch.stack([torch.full((4, 4), 0.8), torch.full((4, 4), -0.8), stripes, stripes.T,
                                     torch.zeros(4, 4)])[:, None]
        self.eval_batch = self._draw(16, 12345)

    def _draw(self, n: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        which = torch.randint(len(CAPTIONS), (n,), generator=gen)
        x = self.patterns[which] + 0.1 * torch.randn(n, 1, 4, 4, generator=gen)
        return Batch(x, None, caption=[CAPTIONS[i] for i in which.tolist()])

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        step = start_step
        while True:
            yield self._draw(batch_size, seed * 100_003 + step)
            step += 1

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        yield self.eval_batch


def experiment(run_dir, conditioner: OpenClipTextConfig, steps: int):
    return PRESETS["digits-ntm"].replace(
        name="open-clip-test", run_dir=str(run_dir), patch_size=2, conditioner=conditioner,
        model=NTMConfig(
            transporter=TarFlowConfig(width=16, num_blocks=1, layers_per_block=1, num_heads=2, use_condition=True),
            predictor=TrajectoryPredictorConfig(depth=1, width=16, num_heads=2),
            process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(2,)),
        ),
        sampler=AncestralConfig(guidance=1.5),
        train=TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=1, sample_every=0, checkpoint_every=steps,
                          log_every=1, device="cpu", precision="fp32", ema_decay=0.5),
    )


@pytest.mark.parametrize("frozen", [True, False])
def test_an_ntm_trains_with_it_and_its_checkpoints_load_back(clip, tmp_path, frozen):
    shutil.copy(clip["a"], tmp_path / "w.pt")  # a file of its own: changed below
    cond = config(clip, dropout=0.2, frozen=frozen).replace(weights=str(tmp_path / "w.pt"))
    exp, data = experiment(tmp_path / "run", cond, steps=6), Captioned()
    torch.manual_seed(exp.train.seed)  # as the loop builds it
    initial = build_model(exp, data).condition_encoder.null_pooled.detach().clone()
    result = train(train_job(exp, data))
    curve = [json.loads(line)["step_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == 6 and all(torch.isfinite(torch.tensor(curve)))
    model = result.ema_model
    assert not torch.equal(model.condition_encoder.null_pooled, initial)  # the learned null is trained
    state = load_checkpoint(CheckpointManager(Path(exp.run_dir) / "checkpoints").latest_path())
    saved = sorted(k for k in state["model"] if k.startswith("condition_encoder."))
    if frozen:  # only the learned null and the tower's digest are saved, in the weights and in the EMA
        assert saved == ["condition_encoder.null_pooled", "condition_encoder.null_token",
                         "condition_encoder.tower_digest"]
        assert sorted(k for k in state["ema"]["shadow"] if k.startswith("condition_encoder.")) == saved[:2]
    else:
        assert "condition_encoder.tower.transformer.resblocks.1.mlp.c_proj.weight" in saved
    # the EMA weights load back into a freshly built model and encode as the trained one
    ids = exp.conditioner.build().inputs(CAPTIONS)
    loaded = load_sampling_weights(build_model(exp, data), state).eval()
    with torch.no_grad():
        again, trained = loaded.encode(ids), model.encode(ids)
    torch.testing.assert_close(again.pooled, trained.pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.tokens, trained.tokens, rtol=0, atol=1e-6)
    # guidance contrasts the captions with the learned null, and changes the samples
    cond, null = guidance_conditions(model, ids, len(CAPTIONS))
    assert isinstance(cond, Condition) and torch.equal(null.pooled[0], model.condition_encoder.null_pooled)
    draw = lambda w: AncestralConfig(guidance=w).build()(model, 5, ids, generator=torch.Generator().manual_seed(3)).x
    guided, plain = draw(1.5), draw(0.0)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, plain)
    # a frozen tower whose weights file changed since training: the checkpoint is refused, in one line
    shutil.copy(clip["b"], tmp_path / "w.pt")
    if frozen:
        with pytest.raises(CheckpointError, match="tower_digest: trained with another frozen text tower") as err:
            load_sampling_weights(build_model(exp, data), state)
        assert "\n" not in str(err.value)
    else:  # a trained tower comes from the checkpoint itself
        load_sampling_weights(build_model(exp, data), state)


def test_the_conformance_kit_runs_on_it(clip):
    cond = config(clip, context_length=8)
    model = testing.build_model(testing.tiny_model_configs()[0], testing.text_model_dims(cond), conditioner=cond)
    testing.check_sampler(AncestralConfig(num_steps=2, guidance=1.0), model=model)
    testing.check_loss(EndToEndConfig(), model=model)


SHAPES = ["data:shapes", "--data.image-size", "16", "--data.train-size", "64", "--data.eval-size", "32"]


def test_fields_on_the_command_line(clip, capsys):
    assert main(["train", "digits-ntm", "conditioner:open-clip", "--conditioner.model", TINY, "--conditioner.weights",
                 str(clip["a"]), "--conditioner.no-frozen", "--conditioner.context-length", "8", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["conditioner"] == {
        "name": "open-clip", "model": TINY, "weights": str(clip["a"]), "frozen": False, "dropout": 0.1,
        "context_length": 8, "cache_size": 4096}


@pytest.mark.parametrize("options, expected", [
    (["--conditioner.model", "ViT-B-33"],
     "conditioner.model: unknown open_clip model 'ViT-B-33' (did you mean 'ViT-B-32'?)"),
    (["--conditioner.model", "xlm-roberta-base-ViT-B-32"],
     "conditioner.model: open_clip model 'xlm-roberta-base-ViT-B-32' has a Hugging Face text tower"),
    (["--conditioner.model=hf-hub:timm/ViT-B-16-SigLIP"], "conditioner.model: 'hf-hub:timm/ViT-B-16-SigLIP' is not"),
    (["--conditioner.model", "ViT-B-16-SigLIP"], "conditioner.model: open_clip model 'ViT-B-16-SigLIP' has a Hugging"),
    (["--conditioner.model", TINY, "--conditioner.weights", "{root}/missing.pt"],
     "conditioner.weights: no such file: {root}/missing.pt"),
    (["--conditioner.model", TINY, "--conditioner.weights", "{root}/vit.pt"],
     f"conditioner.weights: {{root}}/vit.pt does not fit open_clip model {TINY!r} (conditioner.model): "
     "'positional_embedding' is (77, 512) in the file, (16, 32) in the model"),
    (["--conditioner.model", TINY, "--conditioner.weights", "{root}/junk.pt"],
     "conditioner.weights: cannot read {root}/junk.pt as a state dict"),
    (["--conditioner.model", TINY, "--conditioner.context-length", "40"],
     "conditioner.context_length: 40 exceeds the context length of open_clip model"),
])
def test_bad_input_is_one_error_line(clip, tmp_path, capsys, offline, options, expected):
    root = clip["root"]
    if not (root / "vit.pt").exists():  # the text tower of ViT-B-32, as a whole model's file would hold it
        torch.save({"state_dict": {"module.positional_embedding": torch.zeros(77, 512)}}, root / "vit.pt")
        (root / "junk.pt").write_text("not a checkpoint")
    options = [o.replace("{root}", str(root)) for o in options]
    rc = main(["train", "digits-ntm", *SHAPES, "conditioner:open-clip", *options, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("ntm train: error: " + expected.replace("{root}", str(root))), lines
    assert not (tmp_path / "run").exists()
