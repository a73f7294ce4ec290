"""``ntm sample --prompt``: a prompt grid from a caption-conditioned run; one-line errors for bad prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntm.experiments.cli import main
from ntm.viz import load_png

TINY = ["--data.image-size", "16", "--train.steps", "2", "--train.warmup-steps", "0", "--train.sample-every", "0",
        "--eval.num-examples", "32", "--eval.grid-columns", "3", "--transporter.width", "16", "--transporter.num-heads",
        "2", "--transporter.layers-per-block", "1", "--predictor.width", "16", "--predictor.depth", "1",
        "--predictor.num-heads", "2", "--conditioner.width", "16", "--conditioner.depth", "1",
        "--conditioner.num-heads", "2", "--data.train-size", "64", "--data.eval-size", "32"]


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("t2i") / "run"
    assert main(["train", "shapes-t2i-ntm", "--run-dir", str(run), *TINY]) == 0
    return run


def test_prompts_make_one_captioned_row_each(caption_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue star\n\n  three red circles  \n")
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(caption_run), "--prompt", "a red circle", "--prompt", "",
                 "--prompts", str(prompts), "--per-prompt", "2", "--no-denoise", "--out", str(out),
                 "--seed", "0"]) == 0
    samples = np.load(out.with_suffix(".npy"))
    assert samples.shape == (8, 3, 16, 16) and np.isfinite(samples).all()
    assert out.with_suffix(".txt").read_text().splitlines() == [
        "a red circle", "a red circle", "", "", "a blue star", "a blue star", "three red circles", "three red circles"]
    grid = load_png(out)
    assert grid.shape[0] == 3 and grid.shape[1] > 4 * 16  # four rows, each under its caption
    # the same prompts and seed give the same samples; another seed gives others
    for seed, same in (("0", True), ("1", False)):
        again = tmp_path / f"again{seed}.png"
        assert main(["sample", "--run", str(caption_run), "--prompt", "a red circle", "--prompt", "",
                     "--prompts", str(prompts), "--per-prompt", "2", "--no-denoise", "--out", str(again),
                     "--seed", seed]) == 0
        assert np.array_equal(np.load(again.with_suffix(".npy")), samples) == same
    assert "4 prompts" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--prompts", "missing.txt"], "no such file"),
    (["--per-prompt", "2"], "--per-prompt needs --prompt"),
])
def test_bad_prompt_arguments_are_one_line(caption_run, tmp_path, capsys, args, message):
    args = [a if a != "missing.txt" else str(tmp_path / a) for a in args]
    assert main(["sample", "--run", str(caption_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ntm sample: error:") and message in err[0], err


def test_prompt_on_a_labelled_run_is_refused(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "digits-ntm", "--run-dir", str(run), "--train.steps", "1", "--train.warmup-steps", "0",
                 "--eval.num-examples", "16", "--transporter.width", "16", "--transporter.num-heads", "2",
                 "--predictor.width", "16", "--predictor.depth", "1", "--predictor.num-heads", "2",
                 "--train.sample-every", "0", "--denoiser", "none"][:-2] + ["denoiser:none"]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt needs a caption-conditioned run" in err[0] and "'class'" in err[0], err


def test_shapes_eval_scores_both_splits(caption_run, capsys, monkeypatch):
    import ntm.eval.shapes_judge as sj
    import ntm.experiments.t2i as t2i

    calls = []

    def fake_score(judge, images, captions, *, held_out=None, **kw):  # the judge itself is tested in tests/eval
        calls.append((images.shape, len(captions)))
        assert images.min() >= 0 and images.max() <= 1
        verdicts = [i % 2 == 0 for i in range(len(captions))]
        return {**sj.summarise([sj.parse_caption(c) for c in captions], verdicts, held_out), "verdicts": verdicts}

    monkeypatch.setattr(t2i, "score_images", fake_score)
    monkeypatch.setattr(t2i, "shapes_judge", lambda size: object())
    assert main(["eval", "--run", str(caption_run), "--shapes-eval", "--num-samples", "6", "--steps", "4"]) == 0
    result = json.loads((caption_run / "shapes_eval.json").read_text())
    assert calls == [((6, 3, 16, 16), 6), ((6, 3, 16, 16), 6)]
    for split in ("seen", "unseen"):
        assert 0 <= result[split]["overall"] <= 1 and sum(result[split]["counts"].values()) == 6
    assert result["wall_ms_per_sample"] > 0 and "| seen |" in capsys.readouterr().out


def test_shapes_eval_on_a_labelled_run_is_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    from ntm.experiments.presets import PRESETS

    (run / "config.json").write_text(PRESETS["digits-ntm"].model_dump_json())
    assert main(["eval", "--run", str(run), "--shapes-eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shapes-eval needs a caption-conditioned run on data:shapes" in err[0], err


def test_a_long_caption_warns_once_per_run_not_per_batch(caption_run, tmp_path, capsys):
    """Captions past the context length are truncated with one warning line in the whole process, however many
    sampling calls (here two commands, each sampling in its own batches) meet them."""
    long = " ".join(["a red circle and a blue square"] * 8)  # ~56 tokens > context_length 32
    for i in range(2):
        assert main(["sample", "--run", str(caption_run), "--prompt", long, "--prompt", "a red circle",
                     "--per-prompt", "2", "--no-denoise", "--out", str(tmp_path / f"long{i}.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("truncated to conditioner.context_length") == 1, err
