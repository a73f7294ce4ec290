"""A pretrained velocity model from outside the project, wrapped in one small class, is a finetuning teacher.

The outside network here mimics a diffusers-style transformer: it takes
``(sample (B, C, H, W), timestep in [0, 1000], class_labels)`` and returns an
object with ``.sample``; it knows nothing about ntm. The adapter (a
:class:`VelocityXHat`) converts tokens and times and returns the velocity and
the last hidden states per token.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from ntm.forward import MarkovConfig
from ntm.model import NTM
from ntm.predictors import PosteriorPredictor, VelocityPredictor, velocity_model
from ntm.predictors.posterior import VelocityXHat
from ntm.samplers import AncestralConfig, EulerConfig
from ntm.spec import ModelDims
from ntm.transporters import IdentityConfig, TarFlowConfig

F64 = torch.float64


@dataclasses.dataclass
class Output:
    sample: Tensor


class OutsideTransformer(nn.Module):
    """Some other library's image velocity network (random weights): NCHW in, NCHW out."""

    def __init__(self, channels: int = 1, size: int = 4, width: int = 32, num_classes: int = 3) -> None:
        super().__init__()
        self.size = size
        self.embed = nn.Conv2d(channels, width, 1)
        self.time = nn.Linear(1, width)
        self.label = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(2))
        self.out = nn.Linear(width, channels)

    def forward(self, sample: Tensor, timestep: Tensor, class_labels: Tensor) -> Output:
        b, c, h, w = sample.shape
        tokens = self.embed(sample).flatten(2).transpose(1, 2)  # (B, HW, width)
        tokens = tokens + self.time(timestep[:, None].to(tokens.dtype) / 1000)[:, None] + self.label(class_labels)[:, None]
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return Output(self.out(tokens).transpose(1, 2).reshape(b, c, h, w))


class OutsideTeacher(VelocityXHat):
    """The one small class: tokens (B, N, d) <-> NCHW, t in [0, 1] <-> timestep in [0, 1000], hidden via a hook."""

    def __init__(self, net: OutsideTransformer, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.hidden_dim = net.out.in_features
        # the hook stores on the hooked module itself, so a deep copy (the frozen reference) keeps its own
        net.blocks[-1].register_forward_hook(_keep_output)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, n, d = x_t.shape
        side = self.net.size
        labels = torch.full((b,), self.num_classes, device=x_t.device) if cond is None else cond
        out = self.net(x_t.transpose(1, 2).reshape(b, d, side, side), t * 1000, labels).sample
        return out.reshape(b, d, n).transpose(1, 2), self.net.blocks[-1].last_output


def _keep_output(module: nn.Module, args, out: Tensor) -> None:
    module.last_output = out


def models(seed: int = 0) -> tuple[NTM, NTM]:
    dims = ModelDims(num_tokens=16, token_dim=1, num_classes=3)
    torch.manual_seed(seed)
    net = OutsideTransformer(channels=1, size=4, num_classes=3).double()
    process = MarkovConfig(steps=(4,)).build()
    teacher = NTM(IdentityConfig().build(dims), PosteriorPredictor.over(OutsideTeacher(net, 3), dims), process, dims)
    finetuned_predictor = PosteriorPredictor.over(OutsideTeacher(net, 3), dims, learned_scale=True, reference=True)
    transporter = TarFlowConfig(width=16, num_heads=2, use_condition=True).build(dims)
    finetuned = NTM(transporter, finetuned_predictor, process, dims).double()
    return teacher.double(), finetuned


def test_the_adapter_is_a_velocity_teacher_with_hidden_states():
    teacher, _ = models()
    vm = velocity_model(teacher)
    assert isinstance(vm, VelocityPredictor)
    x, t = torch.randn(3, 16, 1, dtype=F64), torch.rand(3, dtype=F64)
    v, hidden = teacher.predictor.xhat.velocity(x, t, torch.tensor([0, 1, 3]))
    assert v.shape == x.shape and hidden.shape == (3, 16, 32)
    # the flow-matching samplers run on it as on the project's own velocity network
    out = EulerConfig(num_steps=4).build()(teacher, 3, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 16, 1) and torch.isfinite(out.x).all()


def test_finetuning_from_the_outside_teacher_starts_at_its_posterior_sampler():
    teacher, finetuned = models()
    labels = torch.tensor([0, 1, 2, 1])
    sampler = AncestralConfig(num_steps=4).build()
    a = sampler(teacher, 4, labels, generator=torch.Generator().manual_seed(5))
    b = sampler(finetuned, 4, labels, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-12)
    x = torch.randn(4, 16, 1, dtype=F64)
    times = teacher.process.times(4, dtype=F64)
    trajectory = teacher.process.sample_trajectory(x, times, torch.Generator().manual_seed(2))
    torch.testing.assert_close(finetuned.step_nlls(trajectory, times, labels), teacher.step_nlls(trajectory, times, labels),
                               rtol=0, atol=1e-10)


def test_scale_head_reads_the_adapters_hidden_states():
    _, finetuned = models()
    with torch.no_grad():
        finetuned.predictor.scale.weight.normal_()
    x, t, s = torch.randn(2, 16, 1, dtype=F64), torch.full((2,), 0.6, dtype=F64), torch.full((2,), 0.3, dtype=F64)
    g = finetuned.predictor(x, t, s, None)
    assert g.log_sigma.std() > 0  # the correction varies per token: it comes from the hidden states


def test_the_frozen_copy_keeps_its_own_hidden_states():
    _, finetuned = models()
    x, t = torch.randn(2, 16, 1, dtype=F64), torch.rand(2, dtype=F64)
    _, h_ref = finetuned.predictor.reference.velocity(x, t)
    _, h_live = finetuned.predictor.xhat.velocity(2 * x, t)
    assert not torch.equal(h_ref, h_live)
    assert torch.equal(finetuned.predictor.reference.net.blocks[-1].last_output, h_ref)


@pytest.mark.parametrize("cond", [None, torch.tensor([1, 3])])
def test_reference_is_the_teacher_read_in_x_space(cond):
    teacher, finetuned = models()
    x_levels = torch.randn(4, 2, 16, 1, dtype=F64)
    times = teacher.process.times(4, dtype=F64)
    ref = finetuned.predictor.reference_trajectory(x_levels, times, cond)
    expected = teacher.predictor.forward_trajectory(x_levels, times, cond).mu
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-12)
