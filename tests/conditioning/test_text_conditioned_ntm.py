"""A caption-conditioned NTM end to end: training on a tiny captioned source, the learned null, guidance,
sampling, held-out NLL and both denoisers, with token ids from conditioner:small-text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ntm.eval.nll import heldout_nll
from ntm.experiments.build import (
    build_model,
    check_condition_source,
    dims_for,
    layout_for,
    sample,
    train_job,
)
from ntm.experiments.presets import PRESETS
from ntm import testing
from ntm.conditioning import NULL_TOKEN, Condition, SmallTextConfig
from ntm.data.base import Batch, DataError, DataSource, DataSpec
from ntm.denoisers import LearnedDenoiser, LearnedDenoiserConfig, ScoreDenoiser
from ntm.denoisers.learned import Distillation, DistillationLoss, distilled_config
from ntm.forward import MarkovConfig, UniformConfig
from ntm.losses import EndToEndConfig
from ntm.model import NTMConfig
from ntm.predictors import TrajectoryPredictorConfig
from ntm.samplers import AncestralConfig, EulerConfig
from ntm.samplers.guidance import guidance_conditions, guide, guided
from ntm.train.checkpoint import CheckpointManager, load_checkpoint, sampling_state_dict
from ntm.train.config import TrainConfig
from ntm.train.loop import train
from ntm.transporters import TarFlowConfig

CAPTIONS = ["a bright square", "a dark square", "a striped square", "a bright square on a dark ground", ""]
TEXT = SmallTextConfig(context_length=8, width=16, depth=1, num_heads=2, dropout=0.2)


class Captioned(DataSource):
    """4x4 one-channel images, one pattern per caption (the empty caption: noise only), plus noise."""

    def __init__(self, num_eval: int = 40) -> None:
        self.spec = DataSpec(shape=(1, 4, 4), num_classes=0, kind="images")
        stripes = torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(4, 1)
        self.patterns = torch.stack([torch.full((4, 4), 0.8), torch.full((4, 4), -0.8), stripes,
                                     torch.tensor([[-0.8] * 4, [-0.8, 0.8, 0.8, -0.8], [-0.8, 0.8, 0.8, -0.8], [-0.8] * 4]),
                                     torch.zeros(4, 4)])[:, None]
        self.eval_batch = self._draw(num_eval, 12345)

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
        total = len(self.eval_batch.caption) if max_examples is None else min(max_examples, len(self.eval_batch.caption))
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            yield Batch(self.eval_batch.x[lo:hi], None, caption=self.eval_batch.caption[lo:hi])


def experiment(run_dir, steps: int = 30):
    return PRESETS["digits-ntm"].replace(
        name="text-test", run_dir=str(run_dir), patch_size=2, conditioner=TEXT,
        model=NTMConfig(
            transporter=TarFlowConfig(width=16, num_blocks=2, layers_per_block=1, num_heads=2, use_condition=True),
            predictor=TrajectoryPredictorConfig(depth=2, width=32, num_heads=2),
            process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(2,)),
        ),
        sampler=AncestralConfig(guidance=1.5),
        train=TrainConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=2, sample_every=0, checkpoint_every=steps,
                          log_every=1, device="cpu", precision="fp32", ema_decay=0.0),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("text-run")
    exp = experiment(run_dir)
    data = Captioned()
    result = train(train_job(exp, data))
    curve = [json.loads(line)["step_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return exp, data, result.ema_model.eval(), curve


def test_a_text_conditioned_ntm_trains_and_its_loss_decreases(trained):
    exp, data, model, curve = trained
    assert len(curve) == 30 and all(torch.isfinite(torch.tensor(curve)))
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 0.1 * abs(first), (first, last)
    assert model.condition_encoder is not None and "condition_encoder" in model.param_groups()
    dims = dims_for(exp, data)
    assert (dims.num_classes, dims.cond_dim, dims.cond_len) == (0, 16, 8)
    # the encoder is trained with the model: its weights moved from their initialisation
    torch.manual_seed(0)
    fresh = build_model(exp, data)
    assert not torch.equal(fresh.condition_encoder.embed.weight[:49406], model.condition_encoder.embed.weight[:49406])
    # checkpointed and EMA'd like the rest: the saved sampling (EMA) weights hold the encoder's
    state = load_checkpoint(CheckpointManager(Path(exp.run_dir) / "checkpoints").latest_path())
    for weights in ("raw", "ema"):
        saved = sampling_state_dict(state, weights)
        assert torch.equal(saved["condition_encoder.null_pooled"], model.condition_encoder.null_pooled)


def test_dropped_and_empty_captions_are_the_learned_null(trained):
    exp, _, model, _ = trained
    ids = exp.conditioner.build().inputs(["a dark square", "", "a striped square"], 0)
    ids[2] = NULL_TOKEN  # as condition dropout leaves a dropped caption
    encoded = model.encode(ids)
    null = model.null_condition(3)
    for row in (1, 2):
        assert torch.equal(encoded.pooled[row], null.pooled[row]) and torch.equal(encoded.tokens[row], null.tokens[row])
        assert torch.equal(encoded.mask[row], null.mask[row])
    assert not torch.equal(encoded.pooled[0], null.pooled[0])
    assert model.encode(None, 3).pooled.shape == (3, 16) and model.encode(encoded) is encoded  # idempotent
    # the training objective sees the learned null for empty captions: the same loss as no condition at all
    x = torch.randn(3, 4, 4, dtype=torch.float32)
    empty = exp.conditioner.build().inputs(["", "", ""], 0)
    loss = EndToEndConfig().build()
    a = model(x, empty, loss, torch.Generator().manual_seed(0))[0]
    b = model(x, None, loss, torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b)


def test_guidance_with_a_text_condition(trained):
    exp, _, model, _ = trained
    n = 4
    ids = exp.conditioner.build().inputs(CAPTIONS[:n], 0)
    cond, null = guidance_conditions(model, ids, n)
    assert isinstance(cond, Condition) and isinstance(null, Condition)
    u = torch.randn(n, 4, 4, dtype=torch.float32)
    t, s = torch.full((n,), 0.7, dtype=torch.float32), torch.full((n,), 0.3, dtype=torch.float32)
    calls = []

    def fn(u_in, t_in, s_in, c):
        calls.append(len(c))
        return model.predictor(u_in, t_in, s_in, c)

    with torch.no_grad():
        plain = model.predictor(u, t, s, cond)
        g0 = guided(fn, (u, t, s), cond, weight=0.0, null=null, rule=guide)
        assert calls == [n] and torch.equal(g0.mu, plain.mu) and torch.equal(g0.log_sigma, plain.log_sigma)
        seen = []
        guided(fn, (u, t, s), cond, weight=1.5, null=null, rule=lambda c, un, w: seen.append((c, un)) or c)
        assert calls[-1] == 2 * n  # both branches in one call
        uncond = model.predictor(u, t, s, null)
        torch.testing.assert_close(seen[0][0].mu, plain.mu, rtol=0, atol=1e-6)
        torch.testing.assert_close(seen[0][1].mu, uncond.mu, rtol=0, atol=1e-6)
    gen = lambda: torch.Generator().manual_seed(3)
    unguided = AncestralConfig(guidance=0.0).build()(model, n, ids, generator=gen())
    guided_out = AncestralConfig(guidance=1.5).build()(model, n, ids, generator=gen())
    assert torch.isfinite(guided_out.x).all() and not torch.allclose(guided_out.x, unguided.x)
    # sampling the null condition: guidance contrasts it with itself, one branch, the unguided samples
    torch.testing.assert_close(AncestralConfig(guidance=1.5).build()(model, n, None, generator=gen()).x,
                               AncestralConfig(guidance=0.0).build()(model, n, None, generator=gen()).x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        guided(fn, (u, t, s), cond, weight=1.0, null=None, rule=guide)


def test_samplers_nll_and_denoisers_accept_a_text_condition(trained):
    exp, data, model, _ = trained
    n = 3
    ids = exp.conditioner.build().inputs(["a dark square", "", "a bright square"], 0)
    out = AncestralConfig(num_steps=2).build()(model, n, ids, generator=torch.Generator().manual_seed(0),
                                                return_trajectory=True)
    assert out.x.shape == (n, 4, 4) and torch.equal(out.cond, ids)
    score = ScoreDenoiser()(model, out.x_trajectory, out.times, ids)
    assert torch.isfinite(score).all()
    torch.testing.assert_close(score, ScoreDenoiser()(model, out.x_trajectory, out.times, model.encode(ids)))
    net = LearnedDenoiserConfig(width=16, depth=1, num_heads=2).network(model.dims)
    learned = LearnedDenoiser(net=net)
    x_hat = learned.from_u0(model, out.u_trajectory[0], out.times, ids)
    assert x_hat.shape == (n, 4, 4) and torch.isfinite(x_hat).all()
    assert torch.equal(learned.denoise(model, out, ids), x_hat)
    assert distilled_config(LearnedDenoiserConfig(), model.dims)["dims"]["cond_len"] == 8
    # distillation: D reads the teacher's encoding of the token ids
    distill = Distillation(net, model)
    loss, _ = distill(torch.randn(n, 4, 4, dtype=torch.float32), ids, DistillationLoss((2,)),
                            torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in net.parameters())
    # held-out NLL with the run's conditioner (true captions, no dropout); without it a one-line DataError
    nll = heldout_nll(model, data, layout_for(exp, data), [2], batch_size=16, conditioner=exp.conditioner.build())
    assert nll[2]["examples"] == 40 and torch.isfinite(torch.tensor(nll[2]["nll_traj_bpd"]))
    with pytest.raises(DataError, match="needs the run's conditioner"):
        heldout_nll(model, data, layout_for(exp, data), [2])
    # ntm.experiments.build.sample: captions tokenized by the experiment's conditioner, guided by its sampler
    images = sample(exp, model, data, 2, captions=["a dark square", "a bright square"], denoise=False)
    assert images.shape == (2, 1, 4, 4)


def test_the_conformance_kit_runs_on_text_models():
    testing.check_sampler(AncestralConfig(num_steps=2, guidance=1.0), model=testing.build_text_model())
    velocity = testing.build_text_model(testing.tiny_model_configs()[1])
    testing.check_sampler(EulerConfig(num_steps=3, guidance=1.0), model=velocity)
    testing.check_loss(EndToEndConfig(), model=testing.build_text_model())
    assert any(d.cond_len for d in testing.PREDICTOR_DIMS)


def test_a_caption_conditioner_needs_a_source_with_captions():
    exp = experiment("unused")
    digits = PRESETS["digits-ntm"].data.build()
    with pytest.raises(DataError, match="reads the batch field 'caption', but data source 'digits' gives no captions"):
        check_condition_source(exp, digits)
    check_condition_source(exp, Captioned())
