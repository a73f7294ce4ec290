"""``ntm.train.checkpoint`` as a package: base < formats < readers < manager, and the old import paths still work."""

from __future__ import annotations

import ast
from pathlib import Path

import ntm.train.checkpoint as package
from ntm.train.checkpoint import CheckpointDirectory, CheckpointManager

ROOT = Path(package.__file__).parent
ORDER = ["base", "rng", "compare", "file", "dcp", "load", "manager"]
"""Lowest first: a module imports only modules before it."""


def _siblings(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ntm.train.checkpoint"):
            assert node.module != "ntm.train.checkpoint", f"{module}.py imports the package itself (a cycle)"
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("ntm.train.checkpoint") for a in node.names), module
    return found


def test_every_module_imports_only_lower_ones_and_base_no_format():
    assert sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    for i, module in enumerate(ORDER):
        assert _siblings(module) <= set(ORDER[:i]), module
    assert _siblings("base") == set()


def test_the_public_names_of_the_old_modules_are_still_there():
    for name in ("FORMAT_KEY", "FORMAT_VERSION", "META_FILE", "PathLike", "CheckpointError", "CheckpointManager",
                 "atomic_torch_save", "check_config_matches", "config_diff", "is_checkpoint_dir", "load_checkpoint",
                 "load_sampling_weights", "read_sampling_state", "rng_state", "sampling_state_dict",
                 "save_checkpoint", "set_rng_state"):
        assert hasattr(package, name), name
    assert issubclass(CheckpointManager, CheckpointDirectory)
