"""A caption-conditioned run through the API and an export: prompts in, the text encoder travels in the file."""

from __future__ import annotations

import shutil

import pytest
import torch

import ntm
from ntm.experiments.build import sample as build_sample
from ntm.experiments.commands.export import main as export_main
from ntm.experiments.runs import load_run

from tests.api.conftest import tiny, train_tiny

PROMPTS = ["two red circles", "a blue star"]


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    exp = tiny("shapes-t2i-ntm", tmp_path_factory.mktemp("api") / "t2i")
    exp = exp.replace(conditioner=exp.conditioner.replace(width=32, depth=1, num_heads=2))
    return train_tiny(exp)


def test_prompts_sample_score_and_export(t2i_run, tmp_path):
    m = ntm.load(t2i_run, device="cpu")
    assert m.conditioning == "captions" and m.num_classes == 0 and m.image_shape == (3, 16, 16)
    images = m.sample(prompts=PROMPTS, denoiser="none")
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    exp, data, model = load_run(t2i_run)
    want = build_sample(exp, model, data, 4, captions=[p for p in PROMPTS for _ in range(2)], denoise=False)
    assert torch.equal(m.sample(4, prompts=PROMPTS, denoiser="none"), data.to_display(want))
    nll = m.nll(images, prompts=PROMPTS)
    assert nll.shape == (2,) and not torch.equal(nll, m.nll(images))  # the caption matters
    assert m.nll(images, prompts="a blue star").shape == (2,)  # one prompt for all
    # the errors name the argument
    with pytest.raises(ntm.ArgumentError, match="^labels: .*captions"):
        m.sample(labels=[1])
    with pytest.raises(ntm.ArgumentError, match="^classify: .*class-conditional"):
        m.classify(images)
    with pytest.raises(ntm.ArgumentError, match="^prompts: expected a string"):
        m.sample(prompts=[1, 2])
    out = tmp_path / "t2i.safetensors"
    assert export_main(["--run", str(t2i_run), "--out", str(out)]) == 0
    copy = tmp_path / "alone" / "t2i.safetensors"
    copy.parent.mkdir()
    shutil.move(out, copy)
    e = ntm.load(copy, device="cpu")
    assert torch.equal(e.sample(prompts=PROMPTS, denoiser="none"), images)
    assert torch.equal(e.nll(images, prompts=PROMPTS), nll)
