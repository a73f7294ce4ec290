"""Finetuning from a flow-matching teacher (docs/math.md §9): the step-0 guarantees and the first update.

At step 0 the finetuned model (TarFlow at identity, the teacher's velocity
network read through the §4 posterior with a zero-initialised scale head, a
frozen copy of it) *is* the teacher's Gaussian-posterior model: same samples
for the same seed, same trajectory NLL, zero mean alignment. One optimizer
step moves the transporter and the scale head, never the frozen copy.
"""

from __future__ import annotations

import pytest
import torch

from ntm.experiments.finetune import TEACHER_MAPPING
from ntm.forward import MarkovConfig
from ntm.losses import FinetuneConfig
from ntm.losses.finetune import align_factor
from ntm.model import NTM, NTMConfig
from ntm.predictors import PosteriorPredictorConfig, VelocityTransformerConfig
from ntm.samplers import AncestralConfig
from ntm.spec import ModelDims
from ntm.testing import perturb_
from ntm.train.init import mapped_state
from ntm.transporters import IdentityConfig, TarFlowConfig

F64 = torch.float64
DIMS = ModelDims(num_tokens=4, token_dim=2, num_classes=3)
XHAT = VelocityTransformerConfig(depth=2, width=16, num_heads=2)
PROCESS = MarkovConfig(steps=(2, 4))


def teacher_and_finetuned(seed: int = 0) -> tuple[NTM, NTM]:
    torch.manual_seed(seed)
    teacher = NTMConfig(transporter=IdentityConfig(), predictor=PosteriorPredictorConfig(xhat=XHAT),
                        process=PROCESS).build(DIMS)
    perturb_(teacher, 0.2, seed)  # a trained-looking teacher, far from any zero initialisation
    finetuned = NTMConfig(
        transporter=TarFlowConfig(width=16, num_heads=2, use_condition=True),
        predictor=PosteriorPredictorConfig(xhat=XHAT, learned_scale=True, reference=True),
        process=PROCESS,
    ).build(DIMS)
    finetuned.load_state_dict(mapped_state(teacher.state_dict(), TEACHER_MAPPING), strict=False)
    return teacher.double(), finetuned.double()


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_step0_samples_are_the_teachers_posterior_sampler(guidance):
    teacher, finetuned = teacher_and_finetuned()
    labels = torch.tensor([0, 1, 2, 0, 1])
    sampler = AncestralConfig(num_steps=4, guidance=guidance).build()
    a = sampler(teacher, 5, labels, generator=torch.Generator().manual_seed(7), return_trajectory=True)
    b = sampler(finetuned, 5, labels, generator=torch.Generator().manual_seed(7), return_trajectory=True)
    torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.u_trajectory, a.u_trajectory, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_steps", [2, 4])
def test_step0_nll_is_the_teachers_analytic_posterior_nll(num_steps):
    teacher, finetuned = teacher_and_finetuned()
    x = torch.randn(6, DIMS.num_tokens, DIMS.token_dim, dtype=F64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])  # the null label included
    times = teacher.process.times(num_steps, dtype=F64)
    trajectory = teacher.process.sample_trajectory(x, times, torch.Generator().manual_seed(3))
    torch.testing.assert_close(finetuned.step_nlls(trajectory, times, labels), teacher.step_nlls(trajectory, times, labels),
                               rtol=0, atol=1e-10)


def test_step0_mean_alignment_is_zero_and_one_step_moves_transporter_and_scale_only():
    _, finetuned = teacher_and_finetuned()
    loss_fn = FinetuneConfig(align_weight=1.0).build()
    loss_fn.at_step(0, 10)
    x = torch.randn(8, DIMS.num_tokens, DIMS.token_dim, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    out = loss_fn(finetuned, x, labels, torch.Generator().manual_seed(1))
    assert out.metrics["align_mse"].item() < 1e-20
    before = {k: v.clone() for k, v in finetuned.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in finetuned.parameters() if p.requires_grad], lr=1e-3)
    out.loss.backward()
    optimizer.step()
    after = finetuned.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("transporter.") for k in moved)
    assert any(k.startswith("predictor.scale.") for k in moved)
    assert not any(k.startswith("predictor.reference.") for k in moved)
    assert all(not p.requires_grad for p in finetuned.predictor.reference.parameters())


def test_alignment_pulls_a_drifted_model_back():
    """Once the predictor has moved, the alignment term is positive and its gradient points back to the teacher."""
    _, finetuned = teacher_and_finetuned()
    perturb_(finetuned.predictor.xhat, 0.05, 11)
    loss_fn = FinetuneConfig(align_weight=1.0, align_schedule="constant").build()
    x = torch.randn(8, DIMS.num_tokens, DIMS.token_dim, dtype=F64)
    out = loss_fn(finetuned, x, None, torch.Generator().manual_seed(1))
    assert out.metrics["align_mse"].item() > 0


def test_align_weight_schedules_anneal_to_zero():
    assert align_factor("constant", 0.7) == 1.0
    assert align_factor("linear", 0.0) == 1.0 and align_factor("linear", 1.0) == 0.0
    assert align_factor("cosine", 0.0) == 1.0 and abs(align_factor("cosine", 1.0)) < 1e-12
    assert align_factor("cosine", 0.5) == pytest.approx(0.5)
    loss_fn = FinetuneConfig(align_weight=2.0, align_schedule="linear").build()
    loss_fn.at_step(9, 10)
    assert loss_fn.weight == 0.0


def test_negative_align_weight_and_missing_reference_are_refused():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="align_weight"):
        FinetuneConfig(align_weight=-0.1)
    with pytest.raises(ValueError, match="frozen copy of the teacher"):
        FinetuneConfig().check_model(NTMConfig(predictor=PosteriorPredictorConfig()))
