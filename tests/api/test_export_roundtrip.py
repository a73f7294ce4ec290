"""``ntm export`` round trip: one safetensors file that samples, scores and classifies exactly like the run, with the
run (and its autoencoder) deleted; no pickle anywhere; one-line errors naming the file for anything else."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import ntm
from ntm.autoencoders import ConvAutoencoderConfig, PretrainedAutoencoderConfig, save_autoencoder
from ntm.data import DigitsConfig
from ntm.denoisers import LearnedDenoiserConfig, ScoreDenoiserConfig
from ntm.denoisers.learned import DenoiserNotTrained, distilled_config
from ntm.experiments.commands.export import main as export_main
from ntm.experiments.runs import denoiser_for, load_run, run_experiment
from ntm.experiments.exports import EXPORT_FORMAT, ExportError, looks_like_export, read_export
from ntm.train.checkpoint import save_checkpoint

from tests.api.conftest import tiny, train_tiny


def header(path: Path) -> tuple[int, dict]:
    """``(header length, header)`` of a safetensors file, parsed by hand."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return n, json.loads(blob[8:8 + n])


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory) -> Path:
    """A copy of the digits run exported by ``ntm export``, the copy then deleted: the file alone in a directory."""
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    shutil.copytree(digits_run, run)
    assert export_main(["--run", str(run)]) == 0
    out = run / "export" / "step_00000002-ema.safetensors"
    alone = root / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "digits.safetensors")
    shutil.rmtree(run)
    return alone / "digits.safetensors"


@pytest.fixture(scope="module")
def run_model(digits_run):
    return ntm.load(digits_run, device="cpu")


def test_the_export_samples_scores_and_classifies_like_the_run(exported, run_model, monkeypatch):
    monkeypatch.chdir(exported.parent)  # nothing but the file here
    m = ntm.load(exported.name, device="cpu")
    assert m.is_export and m.step == 2 and m.weights == "ema" and m.source == Path(exported.name)
    for attr in ("conditioning", "num_classes", "class_names", "image_shape", "data_shape", "kind", "steps"):
        assert getattr(m, attr) == getattr(run_model, attr), attr
    assert m.experiment == run_model.experiment
    samples = m.sample(6, seed=3)  # the run's sampler: guidance 1.5, score denoiser
    assert torch.equal(samples, run_model.sample(6, seed=3))
    assert torch.equal(m.sample(labels=[4, 2], steps=4, denoiser="none"),
                       run_model.sample(labels=[4, 2], steps=4, denoiser="none"))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(m.nll(samples, labels), run_model.nll(samples, labels))
    assert torch.equal(m.nll(samples, kind="bound"), run_model.nll(samples, kind="bound"))
    assert torch.equal(m.log_prior(), run_model.log_prior())
    assert torch.equal(m.class_probabilities(samples, trajectories=1), run_model.class_probabilities(samples, trajectories=1))
    assert m.export("again.safetensors").is_file()  # an export exports again, the same tensors
    assert header(Path("again.safetensors"))[1]["__metadata__"]["format"] == EXPORT_FORMAT


def test_the_file_is_safetensors_with_json_metadata_and_no_pickle(exported, digits_run, monkeypatch):
    blob = exported.read_bytes()
    assert not zipfile.is_zipfile(exported) and blob[8:9] == b"{"  # not torch.save's zip: a JSON header
    n, head = header(exported)
    meta = head.pop("__metadata__")
    assert set(meta) == {"format", "ntm"} and meta["format"] == EXPORT_FORMAT
    payload = json.loads(meta["ntm"])
    assert payload["config"] == json.loads((digits_run / "config.json").read_text())
    assert payload["data"]["num_classes"] == 10 and payload["data"]["display"] == "unit"
    assert payload["data"]["stats"] == json.loads((digits_run / "data_stats.json").read_text())
    assert len(payload["data"]["log_prior"]) == 10 and payload["autoencoder"] is None
    # every byte after the header is some tensor's: nothing else hides in the file
    extents = sorted(tuple(entry["data_offsets"]) for entry in head.values())
    assert extents[0][0] == 0 and all(a[1] == b[0] for a, b in zip(extents, extents[1:]))
    assert 8 + n + extents[-1][1] == len(blob)
    assert all(name.startswith("model.") for name in head)
    # and loading runs no unpickler at all
    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert ntm.load(exported, device="cpu").sample(2).shape == (2, 1, 8, 8)


def test_the_command_line_functions_read_an_export_without_a_run(exported):
    exp, data, model = load_run(None, exported)
    assert exp.name == "digits-ntm" and data.spec.shape == (1, 8, 8) and not model.training
    assert run_experiment(None, exported) == exp
    assert isinstance(denoiser_for(exp, exported), ScoreDenoiserConfig)
    with pytest.raises(DenoiserNotTrained, match="carries no distilled denoiser"):
        denoiser_for(exp, exported, LearnedDenoiserConfig())
    with pytest.raises(Exception, match="held-out data"):
        next(iter(data.eval_batches(8)))


def test_ntm_sample_takes_the_export_alone_and_samples_like_the_run(exported, digits_run, tmp_path, monkeypatch):
    import numpy as np

    from ntm.experiments.cli import main

    monkeypatch.chdir(tmp_path)  # no run directory anywhere near
    assert main(["sample", "--checkpoint", str(exported), "--steps", "2"]) == 0
    alone = np.load(exported.with_name("digits-sample.npy"))
    assert exported.with_name("digits-sample.png").is_file()
    assert main(["sample", "--run", str(digits_run), "--steps", "2", "--out", str(tmp_path / "run.png")]) == 0
    assert np.array_equal(alone, np.load(tmp_path / "run.npy"))


def test_ntm_sample_names_a_missing_checkpoint(tmp_path, capsys):
    from ntm.experiments.cli import main

    assert main(["sample", "--checkpoint", str(tmp_path / "gone.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.safetensors does not exist" in err[0]


def test_an_export_with_its_run_directory_scores_the_run_s_data(exported, digits_run):
    exp, data, model = load_run(digits_run, exported)  # ntm eval --run RUN --checkpoint FILE
    assert next(iter(data.eval_batches(8))).x.shape == (8, 1, 8, 8)
    _, _, original = load_run(digits_run)
    want = original.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def _one_line(call) -> str:
    with pytest.raises((ExportError, FileNotFoundError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_corrupt_truncated_and_foreign_files_are_one_line_naming_the_file(exported, tmp_path):
    blob = exported.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    flipped = bytearray(blob)
    flipped[8 + n + 100] ^= 0x40  # one bit of one weight
    garbled = bytearray(blob)
    garbled[12:20] = b"\xff" * 8  # the JSON header
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(foreign))
    torch.save({"state": {}}, tmp_path / "old.pt")
    cases = {
        "flipped.safetensors": (bytes(flipped), "SHA-256"),
        "truncated.safetensors": (blob[:-64], "truncated"),
        "garbled.safetensors": (bytes(garbled), "corrupt"),
        "short.safetensors": (blob[:5], "corrupt"),
        "foreign.safetensors": (foreign.read_bytes(), "not an ntm export"),
        "old.pt": ((tmp_path / "old.pt").read_bytes(), "torch file"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        for call in (lambda: ntm.load(path, device="cpu"), lambda: load_run(None, path)):
            message = _one_line(call)
            assert str(path) in message and words in message, (name, message)
    assert "does not exist" in _one_line(lambda: read_export(tmp_path / "missing.safetensors"))
    assert not looks_like_export(tmp_path / "old.pt") and looks_like_export(exported)


def test_raw_weights_and_their_refusal(digits_run, tmp_path):
    raw = tmp_path / "raw.safetensors"
    assert export_main(["--run", str(digits_run), "--weights", "raw", "--out", str(raw)]) == 0
    m = ntm.load(raw, ema=False, device="cpu")
    assert m.weights == "raw"
    assert torch.equal(m.sample(2), ntm.load(digits_run, ema=False, device="cpu").sample(2))
    ema = tmp_path / "ema.safetensors"
    assert export_main(["--run", str(digits_run), "--out", str(ema)]) == 0
    assert "EMA weights only" in _one_line(lambda: ntm.load(ema, ema=False))


def test_an_export_carries_the_run_s_distilled_denoiser(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    exp, _, model = load_run(run)
    config = LearnedDenoiserConfig(width=16, depth=1, num_heads=2)
    torch.manual_seed(1)
    net = config.network(model.dims)
    for p in net.parameters():  # a "distilled" network that is not the identity skip
        p.data.normal_(0, 0.05)
    save_checkpoint(run / "denoiser" / "checkpoints" / "step_00000001.pt",
                    {"step": 1, "config": distilled_config(config, model.dims),
                     "model": {f"net.{k}": v for k, v in net.state_dict().items()}})
    out = tmp_path / "with-denoiser.safetensors"
    assert export_main(["--run", str(run), "--out", str(out)]) == 0
    want = ntm.load(run, device="cpu").sample(4, denoiser="learned")
    shutil.rmtree(run)
    assert any(name.startswith("denoiser.") for name in header(out)[1])
    m = ntm.load(out, device="cpu")
    assert torch.equal(m.sample(4, denoiser="learned"), want)
    assert not torch.equal(want, m.sample(4, denoiser="none"))


def test_a_latent_run_exports_with_its_autoencoder(tmp_path):
    ae_dir = tmp_path / "ae"
    config = ConvAutoencoderConfig(downsample=2, latent_channels=2, width=8, blocks=0)
    torch.manual_seed(0)
    autoencoder = config.build((1, 8, 8))
    digits = DigitsConfig().build()
    autoencoder.fit_latent_stats((b.x for b in digits.train_batches(64, seed=0)), max_examples=128)
    save_autoencoder(ae_dir / "autoencoder.pt", autoencoder, config, (1, 8, 8))
    run = train_tiny(tiny("digits-latent-ntm", tmp_path / "latent",
                          autoencoder=PretrainedAutoencoderConfig(path=str(ae_dir))))
    r = ntm.load(run, device="cpu")
    assert r.is_latent and r.image_shape == (1, 8, 8) and r.data_shape == (2, 4, 4)
    images = r.sample(4, denoiser="none")
    nll = r.nll(images)
    out = tmp_path / "latent.safetensors"
    assert export_main(["--run", str(run), "--out", str(out)]) == 0
    shutil.rmtree(run)
    shutil.rmtree(ae_dir)  # the autoencoder travels in the export
    assert any(name.startswith("autoencoder.") for name in header(out)[1])
    m = ntm.load(out, device="cpu")
    assert m.is_latent and m.image_shape == (1, 8, 8) and m.data_shape == (2, 4, 4)
    assert torch.equal(m.sample(4, denoiser="none"), images)
    assert torch.equal(m.nll(images), nll)
    assert m.sample(2, space="data").shape == (2, 2, 4, 4)
