"""FSDP shard units are declared by the components (``shard_units``), not guessed by the trainer.

Only the selection (:func:`ntm.train.distributed.shard_units`) is tested here:
it needs no process group. ``test_parallel.py`` runs the real two-rank FSDP job.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ntm.forward import MarkovConfig
from ntm.model import NTM, NTMConfig
from ntm.nn.layers import AdaLNBlock
from ntm.predictors import TrajectoryPredictorConfig, TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.train import distributed as D
from ntm.transporters import TarFlowConfig, Transporter


def _same(got: list[nn.Module], want: list[nn.Module]) -> bool:
    return len(got) == len(want) and all(a is b for a, b in zip(got, want))


def test_units_of_the_digits_sized_ntm_are_exactly_its_adaln_blocks() -> None:
    # digits-ntm: 8x8 images in 2x2 patches (16 tokens of dim 4), 10 classes
    model = NTMConfig(
        transporter=TarFlowConfig(width=64, num_blocks=2, layers_per_block=2, num_heads=4, use_condition=True),
        predictor=TrajectoryPredictorConfig(depth=4, width=96, num_heads=4),
    ).build(ModelDims(16, 4, 10))
    blocks = [m for m in model.modules() if isinstance(m, AdaLNBlock)]
    assert len(blocks) == 2 * 2 + 4
    assert _same(D.shard_units(model), blocks)
    assert _same(model.shard_units(), model.transporter.shard_units() + model.predictor.shard_units())


class _PlainBlock(nn.Module):
    """A plugin's own transformer-ish block: no ``fsdp_unit`` marker."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc(x)


class _MarkedBlock(_PlainBlock):
    fsdp_unit = True


class _PluginTransporter(Transporter):
    """An identity map holding blocks of its own; declares them as units by overriding ``shard_units``."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_PlainBlock(dim) for _ in range(depth))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, torch.zeros(x.shape[0])

    def inverse(self, u: Tensor, t: Tensor, cond: Tensor | None = None, method: str | None = None) -> Tensor:
        return u

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)


class _MarkedTransporter(_PluginTransporter):
    """Uses the default ``shard_units``: its block class declares itself a unit."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__(dim, depth)
        self.blocks = nn.ModuleList(_MarkedBlock(dim) for _ in range(depth))
        self.head = _PlainBlock(dim)

    shard_units = Transporter.shard_units


@pytest.mark.parametrize("transporter_cls", [_PluginTransporter, _MarkedTransporter])
def test_a_plugin_transporter_declares_its_own_units(transporter_cls: type[_PluginTransporter]) -> None:
    transporter = transporter_cls(8, depth=3)
    predictor = TransformerPredictorConfig(depth=2, width=16, num_heads=2).build(ModelDims(4, 2))
    model = NTM(transporter, predictor, MarkovConfig().build(), ModelDims(4, 2))
    want = [*transporter.blocks, *(m for m in predictor.modules() if isinstance(m, AdaLNBlock))]
    assert len(want) == 3 + 2
    assert _same(D.shard_units(model), want)


def test_a_model_without_shard_units_is_sharded_at_the_root_only() -> None:
    model = nn.Sequential(_MarkedBlock(4), _MarkedBlock(4))
    assert D.shard_units(model) == []


class _Nested(nn.Module):
    """Declares an outer stage before the blocks inside it, and itself, and a repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.first = _PlainBlock(4)
        self.stage = nn.Sequential(_PlainBlock(4), _PlainBlock(4))
        self.last = _PlainBlock(4)

    def shard_units(self) -> list[nn.Module]:
        return [self, self.first, self.stage, *self.stage, self.last, self.first]


def test_nested_units_come_innermost_first_and_the_root_and_repeats_are_dropped() -> None:
    model = _Nested()
    assert _same(D.shard_units(model), [model.first, model.stage[0], model.stage[1], model.stage, model.last])


def test_a_unit_outside_the_model_is_an_error() -> None:
    model = _Nested()
    model.shard_units = lambda: [model.first, _PlainBlock(4)]  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="not its submodules: _PlainBlock"):
        D.shard_units(model)
