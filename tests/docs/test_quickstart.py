"""docs/quickstart.md's commands still run: every ``ntm`` command of its bash blocks parses (fast tier: each
``ntm train``/``ntm finetune`` line resolves its config with ``--dry-run``), and the slow tier runs them all, in
order, in a scratch directory, at tiny budgets (GPU-only and ``torchrun`` lines skipped, named in the test)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from ntm.experiments.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
GPU_ONLY = ("imagenet-paper", "imagenet64-pixels", "t2i-paper", "imagenet-ae", "bench paper", "/data/")
"""Lines naming these need a GPU or a dataset this machine does not have."""
TINY_TRAIN = ["--train.steps", "2", "--train.warmup-steps", "0", "--train.sample-every", "0",
              "--train.checkpoint-every", "2", "--eval.num-examples", "16", "--eval.grid-columns", "2"]
TINY = {
    "train": TINY_TRAIN,
    "finetune": TINY_TRAIN,
    "autoencoder": ["--train.steps", "2", "--eval.num-examples", "16"],
    "distill": ["--steps", "2"],
    "bench": ["--tiny", "--train-steps", "2", "--num-samples", "32"],
    "ablate": ["--tiny", "--train-steps", "2", "--num-samples", "32"],
}
"""Flags appended to each command (a flag given twice: the last one counts)."""


def commands(text: str) -> list[list[str]]:
    """The ``ntm ...`` commands of the bash blocks, in order (``a && b`` gives two; ``\\`` continues a line)."""
    out: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:1] == [".venv/bin/ntm"]:
                    words[0] = "ntm"
                if words[:1] == ["ntm"]:
                    out.append(words[1:])
    return out


JUDGE = ("trains the shapes judge (20,000 scenes, minutes) and refuses it below 95% accuracy per "
                     "category, which it misses by a hair on some CPUs (0.948 measured once); the judge and "
                     "the command are tested in tests/eval/test_shapes_judge.py and tests/cli/test_bench_shapes.py")
SKIPPED = {"--shapes-eval": JUDGE, "bench shapes": JUDGE, "bench latent": JUDGE}
"""What marks a documented line the walk leaves out, and why."""


def runnable(cmd: list[str]) -> bool:
    line = " ".join(cmd)
    return not any(g in line for g in (*GPU_ONLY, *SKIPPED)) and "--help" not in cmd


def test_the_quickstart_has_commands_of_every_kind():
    kinds = {c[0] for c in commands(QUICKSTART.read_text())}
    assert {"train", "sample", "eval", "export", "bench", "finetune", "distill", "autoencoder", "shards"} <= kinds


@pytest.mark.parametrize("cmd", [c for c in commands(QUICKSTART.read_text()) if c[0] == "train" and runnable(c)],
                         ids=lambda c: " ".join(c[1:])[:60])
def test_every_train_line_resolves(cmd, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*cmd, *([] if "--dry-run" in cmd else ["--dry-run"])]) == 0, capsys.readouterr().err
    assert '"name"' in capsys.readouterr().out


def _prepare(workdir: Path) -> None:
    """What the quickstart assumes is there: a folder of images (two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (workdir / "my_images" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(workdir / "my_images" / cls / f"{i}.png")


def _tiny(cmd: list[str]) -> list[str]:
    if cmd[:2] == ["shards", "write"]:
        cmd = list(cmd)
        if "--count" in cmd:
            cmd[cmd.index("--count") + 1] = "12"
        if "--maxcount" in cmd:  # the 12 images of my_images/ as 12 shards, enough for the shard patterns read later
            cmd[cmd.index("--maxcount") + 1] = "1"
    if cmd[:2] == ["eval"] or cmd[0] == "eval":
        extra = ["--num-examples", "16"] + (["--num-samples", "4"] if "--shapes-eval" in cmd else [])
        return [*cmd, *extra]
    if cmd[0] == "bench" and cmd[1] == "latency":
        return [*cmd, "--tiny", "--batch", "2"]
    return [*cmd, *TINY.get(cmd[0], [])]


@pytest.mark.slow
def test_every_quickstart_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _prepare(tmp_path)
    skipped = []
    for cmd in commands(QUICKSTART.read_text()):
        if not runnable(cmd):
            skipped.append(" ".join(cmd))
            continue
        if cmd[0] == "train" and not {"--run-dir", "--config"} & set(cmd):
            shutil.rmtree(tmp_path / "runs" / cmd[1], ignore_errors=True)  # alternatives: each starts afresh
            if "--resume" in cmd:  # what it continues: the preset's own run, cut short
                assert main(["train", cmd[1], *TINY_TRAIN]) == 0, capsys.readouterr().err[-2000:]
        more = {"train": ["--train.steps", "3"], "distill": ["--steps", "3"]}.get(cmd[0], [])  # a resume goes on
        status = main([*_tiny(cmd), *(more if "--resume" in cmd else [])])
        captured = capsys.readouterr()
        assert status == 0, f"ntm {' '.join(cmd)} -> {status}:\n{captured.err[-2000:]}"
    assert all(any(g in s for g in (*GPU_ONLY, *SKIPPED)) or "--help" in s for s in skipped)
