"""The API from a folder with its own ``experiments/``, ``eval/`` and ``registry/`` packages (a research repo's usual
layout): ``import ntm`` and ``ntm.load`` use the installed package, and ``import experiments`` is the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ntm.experiments.commands.export import main as export_main

SCRIPT = """
import sys
import ntm

m = ntm.load(sys.argv[1], device="cpu")
images = m.sample(4)
nll = m.nll(images)
shared = ntm.load(sys.argv[2], device="cpu")
assert (shared.sample(4) == images).all()
import experiments
assert experiments.MARK == "the user's experiments", experiments.__file__
for name in ("eval", "registry", "experiments.build", "experiments.runs", "experiments.api"):
    assert name not in sys.modules, name  # none of the user's other modules was imported by ntm
print("OK", tuple(images.shape), tuple(nll.shape), experiments.__file__)
"""


def test_the_api_ignores_the_user_s_own_experiments_eval_and_registry_packages(digits_run: Path, tmp_path: Path):
    export = tmp_path / "digits.safetensors"
    assert export_main(["--run", str(digits_run), "--out", str(export)]) == 0
    user = tmp_path / "project"
    boom = "raise RuntimeError('ntm imported the user\\'s {}')\n"
    for package in ("experiments", "eval", "registry"):
        (user / package).mkdir(parents=True)
        (user / package / "__init__.py").write_text(boom.format(package))
        for module in ("build", "runs", "api", "cli", "config", "core", "nll", "likelihood"):
            (user / package / f"{module}.py").write_text(boom.format(f"{package}.{module}"))
    (user / "experiments" / "__init__.py").write_text('MARK = "the user\'s experiments"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(digits_run), str(export)], cwd=user, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK (4, 1, 8, 8) (4,)" in result.stdout
    assert str(user / "experiments" / "__init__.py") in result.stdout
