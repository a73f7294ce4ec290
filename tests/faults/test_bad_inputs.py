"""Settings are finite by construction, and every bad input a user can give is one line and exit status 2.

Config level: every float field of every config class of the project (found by walking ``ComponentConfig``'s
subclasses and every registry) refuses ``inf``, ``-inf`` and ``nan``; AdamW betas lie in [0, 1), probabilities in
[0, 1], sampler guidance in [0, 100] and temperatures in (0, 100]. Command level, each probe of issue 18 run
in-process through ``ntm.experiments.cli.main``: exit status 2, exactly one stderr line ``ntm <cmd>: error: ...``,
no traceback. Sampling is chunked to ``eval.sample_batch`` rows with the documented random stream.
"""

from __future__ import annotations

import errno
import io
import json
import math
import shutil
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
import pydantic
import pytest
import torch

import ntm.atomic as atomic
from ntm.experiments.cli import main  # imports every component module, so every config class is defined
from ntm.experiments.core import os_error_message
from ntm.registry import ComponentConfig, Registry

SMALL = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1",
         "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "8"]


def one_line(status: int, capsys, command: str) -> str:
    """The single stderr line of a refused command (exit 2, ``ntm <command>: error: ...``, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("step ")]  # progress lines
    assert status == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"ntm {command}: error: "), err
    return lines[0]


# -- every float of every config is finite ---------------------------------------------------------------------------
def _config_classes() -> list[type[ComponentConfig]]:
    """Every config class of the project: ``ComponentConfig``'s subclasses defined in ``ntm`` modules."""
    found, todo = {}, [ComponentConfig]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("ntm.") and sub not in found.values():
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
            todo.append(sub)
    return [found[k] for k in sorted(found)]


def _registries() -> list[Registry]:
    seen: dict[int, Registry] = {}
    for name, module in list(sys.modules.items()):
        if name == "ntm" or name.startswith("ntm."):
            for value in list(vars(module).values()):
                if isinstance(value, Registry):
                    seen[id(value)] = value
    return list(seen.values())


_NO_FLOAT = object()


def _with_float(annotation: Any, x: float) -> Any:
    """A value of type ``annotation`` holding ``x`` wherever a float goes (``_NO_FLOAT``: the type holds none)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is float:
        return x
    if origin is Annotated:
        return _with_float(args[0], x)
    if origin in (Union, types.UnionType):
        for arg in args:
            value = _with_float(arg, x)
            if value is not _NO_FLOAT:
                return value
        return _NO_FLOAT
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            value = _with_float(args[0], x)
            return _NO_FLOAT if value is _NO_FLOAT else (value,)
        values = [_with_float(a, x) for a in args]
        if all(v is _NO_FLOAT for v in values):
            return _NO_FLOAT
        return tuple(1 if v is _NO_FLOAT else v for v in values)
    if origin in (list, set, frozenset):
        value = _with_float(args[0], x) if args else _NO_FLOAT
        return _NO_FLOAT if value is _NO_FLOAT else [value]
    if origin is dict:
        value = _with_float(args[1], x) if len(args) == 2 else _NO_FLOAT
        return _NO_FLOAT if value is _NO_FLOAT else {"x": value}
    return _NO_FLOAT


def _float_fields() -> list[tuple[type[ComponentConfig], str]]:
    return [(cls, name) for cls in _config_classes() for name, field in cls.model_fields.items()
            if _with_float(field.annotation, 1.0) is not _NO_FLOAT]


FLOAT_FIELDS = _float_fields()


def test_the_walk_finds_every_registered_config_and_many_float_fields():
    classes = set(_config_classes())
    registries = _registries()
    assert len(registries) >= 10
    missing = [f"{r.kind}:{e.name}" for r in registries for e in r.entries() if e.config_cls not in classes]
    assert not missing, missing
    names = {f"{cls.__name__}.{f}" for cls, f in FLOAT_FIELDS}
    assert {"TrainConfig.lr", "TrainConfig.betas", "AncestralConfig.guidance", "EulerConfig.temperature",
            "ClassLabelConfig.dropout", "MixtureConfig.weights"} <= names, sorted(names)
    assert len(FLOAT_FIELDS) > 40


@pytest.mark.parametrize("cls, field", FLOAT_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in FLOAT_FIELDS])
def test_every_float_field_refuses_inf_and_nan(cls, field):
    annotation = cls.model_fields[field].annotation
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(pydantic.ValidationError) as info:
            cls.model_validate({field: _with_float(annotation, bad)})
        errors = [e for e in info.value.errors() if e["loc"] and e["loc"][0] == field]
        assert any(e["type"] == "finite_number" for e in errors), (bad, info.value.errors())


def test_a_config_that_allows_inf_nan_cannot_register():
    from ntm.samplers import SAMPLERS, AncestralConfig, AncestralSampler

    class Loose(AncestralConfig):
        model_config = pydantic.ConfigDict(allow_inf_nan=True)

    with pytest.raises(TypeError, match="allow_inf_nan"):
        SAMPLERS.register("loose-test", Loose)(type("LooseSampler", (AncestralSampler,), {}))
    assert "loose-test" not in SAMPLERS


@pytest.mark.parametrize("betas, ok", [((0.9, 0.99), True), ((0.0, 0.0), True), ((0.9, 1.0), False),
                                       ((-0.1, 0.9), False), ((0.9, 1.5), False)])
def test_adamw_betas_lie_in_zero_one(betas, ok):
    from ntm.train.config import TrainConfig

    if ok:
        assert TrainConfig(betas=betas).betas == betas
    else:
        with pytest.raises(pydantic.ValidationError, match=r"betas must each be in \[0, 1\)"):
            TrainConfig(betas=betas)


PROBABILITIES = [(cls, f) for cls, f in FLOAT_FIELDS if cls.model_fields[f].annotation is float
                 and any(word in f for word in ("dropout", "prob", "fraction"))]
PROBABILITIES += [(cls, f) for cls, f in FLOAT_FIELDS if f in ("ema_decay", "min_lr_ratio")]


@pytest.mark.parametrize("cls, field", PROBABILITIES, ids=[f"{c.__name__}.{f}" for c, f in PROBABILITIES])
def test_probabilities_lie_in_zero_one(cls, field):
    assert len(PROBABILITIES) >= 6
    for bad in (-0.01, 1.01, 2.0):
        with pytest.raises(pydantic.ValidationError):
            cls.model_validate({field: bad})


def test_mixing_weights_are_a_probability_vector():
    from ntm.data.toys import MixtureConfig

    with pytest.raises(pydantic.ValidationError, match="probability vector"):
        MixtureConfig(weights=(1.5, -0.5), means=(0.0, 0.0, 1.0, 1.0), variances=(1.0, 1.0))


def test_sampler_guidance_and_temperature_ranges():
    from ntm.samplers import SAMPLERS
    from ntm.samplers.base import GUIDANCE_MAX, TEMPERATURE_MAX

    checked = 0
    for entry in SAMPLERS.entries():
        fields = entry.config_cls.model_fields
        if "guidance" in fields:
            for bad in (math.inf, 1e30, math.nan, -1.0, GUIDANCE_MAX * 1.01):
                with pytest.raises(pydantic.ValidationError):
                    entry.config_cls(guidance=bad)
            assert entry.config_cls(guidance=GUIDANCE_MAX).guidance == GUIDANCE_MAX
            checked += 1
        if "temperature" in fields:
            for bad in (math.inf, 1e30, math.nan, 0.0, -1.0, TEMPERATURE_MAX * 1.01):
                with pytest.raises(pydantic.ValidationError):
                    entry.config_cls(temperature=bad)
            assert entry.config_cls(temperature=1e-3).temperature == 1e-3
            checked += 1
    assert checked >= 6  # ancestral, euler, heun: both fields each


@pytest.mark.parametrize("args, field", [
    (["--train.lr", "inf"], "train.lr: Input should be a finite number"),
    (["--train.lr", "nan"], "train.lr: Input should be a finite number"),
    (["--train.betas", "nan", "0.9"], "train.betas.0: Input should be a finite number"),
    (["--train.betas", "0.9", "1"], "train.betas: AdamW betas must each be in [0, 1)"),
    (["--train.grad-clip", "inf"], "train.grad_clip: Input should be a finite number"),
    (["--conditioner.dropout", "1.5"], "conditioner.dropout"),
    (["--sampler.guidance", "inf"], "sampler.guidance: Input should be a finite number"),
])
def test_non_finite_settings_are_refused_at_parse_time(args, field, capsys, tmp_path):
    status = main(["train", "digits-ntm", "--run-dir", str(tmp_path / "never"), *args, "--dry-run"])
    assert field in one_line(status, capsys, "train")
    assert not (tmp_path / "never").exists()


# -- the file-system errors that are the user's to fix ---------------------------------------------------------------
def test_os_error_messages_name_the_final_path():
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/r/ckpt.pt.tmp-12-abcdef01"))
    assert full == "no space left on device writing /r/ckpt.pt: the disk is full; free space or write elsewhere"
    assert "disk quota" in os_error_message(OSError(errno.EDQUOT, "Disk quota exceeded", "/r/x"))
    assert "the disk is full" in os_error_message(OSError(errno.ENOSPC, "No space left on device"))
    moved = IsADirectoryError(errno.EISDIR, "Is a directory", "/o.tmp-1-2", "/o")
    assert os_error_message(moved) == "/o is a directory; name a file"
    assert os_error_message(OSError(errno.EIO, "I/O error", "/x")) is None  # a crash, not a user error
    assert os_error_message(ValueError("x")) is None


def test_an_atomic_write_to_a_directory_is_refused_and_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic.atomic_write_text(target, "x")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any(target.iterdir())


class _FullDisk:
    """A file whose writes fail as on a full disk (``OSError`` ENOSPC, naming no file)."""

    def __init__(self, code: int = errno.ENOSPC) -> None:
        self.code = code

    def write(self, data) -> int:
        raise OSError(self.code, "No space left on device" if self.code == errno.ENOSPC else "Disk quota exceeded")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")  # writers fall back to write()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0

    def seek(self, *args) -> int:
        return 0

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def full_disk(monkeypatch, code: int = errno.ENOSPC) -> None:
    """Every atomic write (``ntm.atomic``: checkpoints' files, config.json, PNGs, .npy, exports' names) hits a full
    disk."""
    import builtins

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if "w" in mode and atomic.TMP_INFIX in Path(file).name:
            real_open(file, mode, *args, **kwargs).close()  # the temporary exists, as after a real failed write
            return _FullDisk(code)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", open_, raising=False)


def test_a_failed_write_names_the_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic.atomic_save_npy(tmp_path / "s.npy", np.zeros(3))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "s.npy")
    assert list(tmp_path.iterdir()) == []


# -- probes on a tiny trained run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A class-conditional run (digits-ntm, 8x8 digits in 4 tokens, guided, score denoiser), trained 2 steps."""
    run = tmp_path_factory.mktemp("bad-inputs") / "digits"
    assert main(["train", "digits-ntm", *SMALL, "--patch-size", "4", "--run-dir", str(run), "--train.steps", "2"]) == 0
    return run


@pytest.mark.parametrize("args, expect", [
    (["--guidance", "inf"], "sampler.guidance: Input should be a finite number"),
    (["--guidance", "1e30"], "sampler.guidance: Input should be less than or equal to 100"),
    (["--guidance", "nan"], "sampler.guidance: Input should be a finite number"),
    (["--guidance", "-1"], "sampler.guidance: Input should be greater than or equal to 0"),
    (["--temperature", "inf"], "sampler.temperature: Input should be a finite number"),
    (["--temperature", "0"], "sampler.temperature: Input should be greater than 0"),
    (["--temperature", "-1"], "sampler.temperature: Input should be greater than 0"),
    (["--temperature", "1e30"], "sampler.temperature: Input should be less than or equal to 100"),
    (["--sample-batch", "0"], "--sample-batch must be >= 1"),
])
def test_sample_refuses_bad_sampler_settings(digits_run, tmp_path, capsys, args, expect):
    capsys.readouterr()
    out = tmp_path / "s.png"
    assert expect in one_line(main(["sample", "--run", str(digits_run), *args, "--out", str(out)]), capsys, "sample")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, expect", [
    ({"guidance": math.inf}, "guidance=inf: Input should be a finite number"),
    ({"guidance": 1e30}, "guidance=1e+30: Input should be less than or equal to 100"),
    ({"temperature": math.nan}, "temperature=nan: Input should be a finite number"),
    ({"temperature": 0.0}, "temperature=0.0: Input should be greater than 0"),
    ({"batch_size": 0}, "batch_size: expected a positive int"),
])
def test_the_python_api_refuses_them_too(digits_run, kwargs, expect):
    import ntm
    from ntm.experiments.api import ArgumentError

    model = ntm.load(digits_run)
    with pytest.raises(ArgumentError) as info:
        model.sample(4, **kwargs)
    assert str(info.value).splitlines() == [str(info.value)] and expect in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(digits_run, tmp_path, capsys):
    import ntm
    from ntm.experiments.api import ArgumentError

    status = main(["train", "toy-ntm", *SMALL, "--run-dir", str(tmp_path / "run"), "--train.steps", "1",
                   "--train.device", "cuda"])
    line = one_line(status, capsys, "train")
    assert "train.device" in line and "CUDA is not available" in line
    with pytest.raises(ArgumentError, match="CUDA is not available"):
        ntm.load(digits_run, device="cuda")


@pytest.mark.parametrize("key, value", [("guidance", "Infinity"), ("temperature", "NaN"), ("guidance", "1e999")])
def test_a_saved_config_with_a_non_finite_setting_is_one_line(digits_run, tmp_path, capsys, key, value):
    shared = tmp_path / "shared"
    shutil.copytree(digits_run, shared)
    config = json.loads((shared / "config.json").read_text())
    config["sampler"][key] = "__BAD__"
    (shared / "config.json").write_text(json.dumps(config).replace('"__BAD__"', value))  # JSON's own inf / nan
    for command in ("sample", "eval"):
        capsys.readouterr()
        line = one_line(main([command, "--run", str(shared)]), capsys, command)
        assert f"sampler.{key}: Input should be a finite number" in line


@pytest.fixture
def binary_run(digits_run, tmp_path) -> Path:
    shared = tmp_path / "binary"
    shutil.copytree(digits_run, shared)
    (shared / "config.json").write_bytes(bytes(range(256)) * 4)
    return shared


@pytest.mark.parametrize("command", ["sample", "eval", "train --config", "finetune"])
def test_a_binary_config_json_is_one_line_naming_the_file(binary_run, capsys, command):
    config = binary_run / "config.json"
    args = {"sample": ["sample", "--run", str(binary_run)], "eval": ["eval", "--run", str(binary_run)],
            "train --config": ["train", "--config", str(config), "--resume"],
            "finetune": ["finetune", "--from", str(binary_run), "--dry-run"]}[command]
    capsys.readouterr()
    line = one_line(main(args), capsys, args[0])
    assert f"config file {config} is not UTF-8 text" in line


def test_a_binary_data_stats_json_is_one_line(digits_run, tmp_path, capsys):
    shared = tmp_path / "stats"
    shutil.copytree(digits_run, shared)
    (shared / "data_stats.json").write_bytes(b"\xff\xfe\x00garbage")
    capsys.readouterr()
    assert f"{shared / 'data_stats.json'} is not UTF-8 text" in one_line(main(["sample", "--run", str(shared)]), capsys,
                                                                          "sample")


def test_out_naming_a_directory_is_one_line_and_leaves_no_stray_file(digits_run, tmp_path, capsys):
    target = tmp_path / "figures"
    target.mkdir()
    capsys.readouterr()
    line = one_line(main(["sample", "--run", str(digits_run), "--out", str(target)]), capsys, "sample")
    assert f"--out {target} is a directory" in line
    assert [p.name for p in tmp_path.iterdir()] == ["figures"] and not any(target.iterdir())
    sibling = tmp_path / "s.npy"  # the .npy beside the PNG names a directory
    sibling.mkdir()
    line = one_line(main(["sample", "--run", str(digits_run), "--out", str(tmp_path / "s.png")]), capsys, "sample")
    assert f"{sibling} (the samples beside the PNG) is a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "s.npy"]


@pytest.mark.parametrize("code, expect", [(errno.ENOSPC, "no space left on device writing"),
                                          (errno.EDQUOT, "disk quota exceeded writing")])
def test_a_full_disk_while_sampling_says_so_and_names_the_file(digits_run, tmp_path, capsys, monkeypatch, code, expect):
    full_disk(monkeypatch, code)
    out = tmp_path / "s.png"
    capsys.readouterr()
    line = one_line(main(["sample", "--run", str(digits_run), "--out", str(out)]), capsys, "sample")
    assert line == f"ntm sample: error: {expect} {out.with_suffix('.npy')}: the disk " + \
        ("is full; free space or write elsewhere" if code == errno.ENOSPC else
         "quota is full; free space or write elsewhere")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary


def test_a_full_disk_while_training_or_resuming_says_so(digits_run, tmp_path, capsys, monkeypatch):
    shared = tmp_path / "resume"
    shutil.copytree(digits_run, shared)
    before = (shared / "config.json").read_bytes()
    full_disk(monkeypatch)
    capsys.readouterr()
    status = main(["train", "digits-ntm", *SMALL, "--patch-size", "4", "--run-dir", str(shared), "--train.steps", "3",
                   "--resume"])
    line = one_line(status, capsys, "train")
    assert "no space left on device writing" in line and str(shared) in line and "disk is full" in line
    assert (shared / "config.json").read_bytes() == before
    assert not [p for p in shared.rglob(f"*{atomic.TMP_INFIX}*")]


def test_a_full_disk_while_exporting_says_so(digits_run, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def fails(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError(f'Error while serializing: I/O error: No space left on device (os error 28) at "{filename}"')

    monkeypatch.setattr(safetensors.torch, "save_file", fails)
    out = tmp_path / "m.safetensors"
    capsys.readouterr()
    line = one_line(main(["export", "--run", str(digits_run), "--out", str(out)]), capsys, "export")
    assert line.startswith(f"ntm export: error: no space left on device writing {out}")
    assert list(tmp_path.iterdir()) == []


# -- chunked sampling -------------------------------------------------------------------------------------------------
def test_sampling_is_chunked_with_the_documented_stream(digits_run, monkeypatch):
    """``n`` rows in chunks of ``batch_size``: no sampler call sees more than a chunk; chunk i equals the unchunked
    draw of its rows seeded ``chunk_seed(seed, i)``, chunk 0 with the seed itself; one chunk is exactly one call."""
    from ntm.experiments.build import chunk_seed, sample
    from ntm.experiments.runs import load_run
    from ntm.samplers.ancestral import AncestralSampler

    exp, data, model = load_run(digits_run)
    labels = torch.arange(10).repeat(2)[:19]
    calls: list[int] = []
    real = AncestralSampler.__call__
    monkeypatch.setattr(AncestralSampler, "__call__", lambda self, m, n, *a, **k: calls.append(n) or real(self, m, n, *a, **k))
    chunked = sample(exp, model, data, 19, labels=labels, batch_size=8)
    assert calls == [8, 8, 3] and chunked.shape == (19, 1, 8, 8) and torch.isfinite(chunked).all()
    for i, (a, b) in enumerate([(0, 8), (8, 16), (16, 19)]):
        alone = sample(exp, model, data, b - a, labels=labels[a:b], seed=chunk_seed(exp.eval.seed, i), batch_size=100)
        assert torch.equal(alone, chunked[a:b]), i
    assert chunk_seed(exp.eval.seed, 0) == exp.eval.seed and len({chunk_seed(0, i) for i in range(100)}) == 100
    # one chunk is the draw before chunking: one sampler call with a generator seeded eval.seed, then denoised
    sampler = exp.sampler.build()
    gen = torch.Generator().manual_seed(exp.eval.seed)
    denoiser = exp.denoiser.build()
    out = real(sampler, model, 19, labels, generator=gen, return_trajectory=denoiser.trajectory_request())
    from ntm.experiments.build import layout_for

    direct = layout_for(exp, data).from_tokens(denoiser.denoise(model, out, labels).detach()).float()
    assert torch.equal(sample(exp, model, data, 19, labels=labels), direct)  # eval.sample_batch (1024) >= 19
    # the API and the CLI chunk the same way
    import ntm

    api = ntm.load(digits_run).sample(19, labels=labels, batch_size=8, space="data")
    assert torch.equal(api, chunked)


def test_many_samples_in_small_chunks(digits_run):
    import ntm

    model = ntm.load(digits_run)
    x = model.sample(1500, labels=list(range(10)), batch_size=256, denoiser="none")
    assert x.shape == (1500, 1, 8, 8) and torch.isfinite(x).all()


def test_the_prompt_picture_is_capped_and_decodes_only_what_it_shows(monkeypatch):
    from ntm.experiments.commands import sample as command

    monkeypatch.setattr(command, "PICTURE_PROMPTS", 6)  # the caps are module constants (64 prompts, 32 samples)
    monkeypatch.setattr(command, "PICTURE_PER_PROMPT", 4)
    decoded = []

    class Data:
        def to_display(self, x):
            decoded.append(x.shape[0])
            return (x + 1) / 2

    prompts = [f"prompt {i}" for i in range(100)]
    per = 1000
    samples = torch.zeros(len(prompts) * per, 3, 4, 4)
    image = command.prompt_picture(Data(), samples, prompts, per)
    assert decoded == [command.PICTURE_PER_PROMPT] * command.PICTURE_PROMPTS
    small = command.prompt_picture(Data(), samples[:2 * command.PICTURE_PER_PROMPT], prompts[:2],
                                   command.PICTURE_PER_PROMPT)
    assert image.shape[2] == small.shape[2]  # as wide as a full row, whatever per_prompt is
    assert image.shape[1] == small.shape[1] * command.PICTURE_PROMPTS // 2


@pytest.mark.slow
def test_per_prompt_beyond_the_chunk_size_on_a_caption_run(tmp_path, capsys):
    """``ntm sample --per-prompt`` far beyond a chunk: every sample in the .npy, a bounded picture."""
    from tests.cli.test_prompts import TINY as T2I
    from ntm.viz import load_png

    run = tmp_path / "t2i"
    assert main(["train", "shapes-t2i-ntm", "--run-dir", str(run), *T2I]) == 0
    out = tmp_path / "p.png"
    assert main(["sample", "--run", str(run), "--prompt", "a red circle", "--prompt", "a blue star", "--per-prompt",
                 "5000", "--sample-batch", "1024", "--no-denoise", "--out", str(out)]) == 0
    samples = np.load(out.with_suffix(".npy"))
    assert samples.shape == (10000, 3, 16, 16) and np.isfinite(samples).all()
    assert len(out.with_suffix(".txt").read_text().splitlines()) == 10000
    assert load_png(out).shape[2] < 64 * 40  # at most 32 samples a row
    assert "the picture shows 32 per prompt" in capsys.readouterr().out
