"""``Conditioner.condition(batch, num_classes, generator)``: a batch -> the model's condition input, and ``reads``."""

from __future__ import annotations

import pytest
import torch

from ntm.conditioning import (
    CONDITIONERS,
    NULL_TOKEN,
    ClassLabelConfig,
    Conditioner,
    ConditionerConfig,
    FunctionConditioner,
    NoConditionConfig,
    SmallTextConfig,
    as_conditioner,
    heldout_condition,
)
from ntm.data.base import Batch

LABELS = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
CAPTIONS = ["a red circle", "", "a blue square", "x", "two stars", "a", "b", "c"]
BATCH = Batch(x=torch.zeros(8, 2), label=LABELS, caption=CAPTIONS)


def test_every_registered_config_and_conditioner_declares_what_it_reads():
    for entry in CONDITIONERS.entries():
        config = entry.config_cls
        assert issubclass(config, ConditionerConfig) and config.reads in ("label", "caption"), entry.name
        assert entry.cls.reads == config.reads, entry.name
        assert "reads" not in config.model_fields  # a class attribute: never written to config.json
    assert ConditionerConfig.reads == Conditioner.reads == "label"
    assert ClassLabelConfig().reads == ClassLabelConfig().build().reads == NoConditionConfig().build().reads == "label"
    assert SmallTextConfig().reads == SmallTextConfig().build().reads == "caption"


def test_without_a_generator_it_is_inputs_of_the_field_it_reads():
    labels = ClassLabelConfig(dropout=0.9).build()
    assert torch.equal(labels.condition(BATCH, 10), LABELS)  # no dropout
    assert labels.condition(Batch(x=BATCH.x), 10) is None  # an unlabelled batch
    assert NoConditionConfig().build().condition(BATCH, 10) is None
    text = SmallTextConfig(context_length=8, width=16, depth=1, num_heads=2, dropout=0.9).build()
    assert torch.equal(text.condition(BATCH, 10), text.inputs(CAPTIONS, 10))


def test_with_a_generator_it_is_the_training_condition_drawn_from_it():
    labels = ClassLabelConfig(dropout=0.5).build()
    got = labels.condition(BATCH, 10, torch.Generator().manual_seed(3))
    assert torch.equal(got, labels(LABELS, 10, torch.Generator().manual_seed(3)))
    assert (got == 10).any() and (got != 10).any()
    text = SmallTextConfig(context_length=8, width=16, depth=1, num_heads=2, dropout=0.5).build()
    ids = text.condition(BATCH, 10, torch.Generator().manual_seed(4))
    assert torch.equal(ids, text(CAPTIONS, 10, torch.Generator().manual_seed(4)))
    assert (ids == NULL_TOKEN).all(1).sum() > 1  # some captions dropped besides the empty one


def test_micro_batches_read_their_own_rows():
    labels = ClassLabelConfig(dropout=0.0).build()
    assert torch.equal(labels.condition(BATCH.rows(slice(2, 5)), 10, torch.Generator()), LABELS[2:5])
    part = BATCH.rows(slice(4, 8))
    assert part.caption == CAPTIONS[4:] and part.x.shape == (4, 2) and part.annotation is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_tensor_field_moves_to_the_generators_device():
    batch = Batch(x=torch.zeros(8, 2), label=LABELS.cuda())
    got = ClassLabelConfig(dropout=0.5).build().condition(batch, 10, torch.Generator().manual_seed(3))
    assert got.device.type == "cpu"


def test_a_plain_function_becomes_a_conditioner_reading_labels():
    seen = []
    wrapped = as_conditioner(lambda raw, n, gen: seen.append((raw, n, gen)) or None)
    assert isinstance(wrapped, FunctionConditioner) and wrapped.reads == "label"
    gen = torch.Generator()
    assert wrapped.condition(BATCH, 10, gen) is None and seen[0][0] is LABELS and seen[0][1:] == (10, gen)
    assert wrapped.condition(BATCH, 10) is None and seen[1] == (LABELS, 10, None)
    conditioner = ClassLabelConfig().build()
    assert as_conditioner(conditioner) is conditioner


def test_heldout_condition_reads_without_dropout_or_takes_the_labels():
    dropped = ClassLabelConfig(dropout=0.99).build()  # would drop nearly every label in training
    assert torch.equal(heldout_condition(dropped, BATCH, 10, "cpu"), LABELS)
    assert torch.equal(heldout_condition(None, BATCH, 10, "cpu"), LABELS)  # no conditioner: the labels as they are
    assert heldout_condition(None, BATCH, 0, "cpu") is None  # unconditional data
    assert heldout_condition(None, Batch(x=BATCH.x), 10, "cpu") is None
    assert heldout_condition(NoConditionConfig().build(), BATCH, 10, "cpu") is None
