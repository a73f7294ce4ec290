"""The package layers: registry < ntm < eval < experiments; nothing imports a higher layer.

Every absolute import in every module (including imports inside functions and
``if TYPE_CHECKING:`` blocks) is read with ``ast``; relative imports stay in
their own package and so in their own layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"registry": 0, "ntm": 1, "eval": 2, "experiments": 3}


def _modules() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _upward_imports() -> list[str]:
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        layer = LAYERS[rel.parts[0]]
        for module in _imports(path):
            top = module.split(".")[0]
            if LAYERS.get(top, -1) > layer:
                found.append(f"{rel.as_posix()} imports {module}")
    return found


def test_every_layer_package_has_modules():
    for pkg in LAYERS:
        assert any((ROOT / pkg).rglob("*.py")), f"no modules under {pkg}/"


def test_no_module_imports_a_higher_layer():
    upward = _upward_imports()
    assert not upward, "imports of a higher layer (registry < ntm < eval < experiments):\n" + "\n".join(upward)


def test_registry_imports_none_of_the_other_layers():
    found = [f"{p.relative_to(ROOT).as_posix()} imports {m}" for p in (ROOT / "registry").rglob("*.py")
             for m in _imports(p) if m.split(".")[0] in LAYERS and m.split(".")[0] != "registry"]
    assert not found, "\n".join(found)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from experiments.config import Experiment\n    import eval.metrics as m\n")
    assert _imports(module) == ["os", "experiments.config", "eval.metrics"]
