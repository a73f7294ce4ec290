"""The package layers: registry < ntm < eval < experiments; nothing imports a higher layer, and no import cycle.

The repository's folders ``registry/``, ``ntm/``, ``eval/`` and ``experiments/`` install as one package,
``ntm`` (``ntm.registry``, ``ntm.eval``, ``ntm.experiments``; see pyproject.toml). Every import in every module
(including imports inside functions and ``if TYPE_CHECKING:`` blocks; relative ones resolved) is read with
``ast``. The module graph over those imports has no cycle, and no module imports by a string
(``__import__("...")``, ``importlib.import_module("...")`` with a literal): the plugin loader, which imports the
module a user names, is the one dynamic import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"registry": "ntm.registry", "ntm": "ntm", "eval": "ntm.eval", "experiments": "ntm.experiments"}
"""Repository folder -> the package name it installs as."""
LAYERS = {"ntm.registry": 0, "ntm": 1, "ntm.eval": 2, "ntm.experiments": 3}
FACADE = "ntm"
"""The package's own ``__init__``: the public front door (``ntm.load``, ...), above every layer; it imports lazily,
so ``import ntm.registry`` stays light, and nothing in the project imports names from it."""
EXPERIMENT_RANKS = {"ntm.experiments": 0, "ntm.experiments.bench": 1, "ntm.experiments.commands": 2,
                    "ntm.experiments.cli": 3}
"""Inside experiments/: the library (config, build, run loading, ...) < the benches < one module per command < the
dispatcher. Nothing imports a higher rank."""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


MODULES = {module_name(p): p for p in _files()}


def _rank(module: str, ranks: dict[str, int]) -> int | None:
    best = None
    for prefix, rank in ranks.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def layer_of(module: str) -> int | None:
    """The layer of an installed module name (None: not the project's; the facade is above every layer)."""
    return max(LAYERS.values()) + 1 if module == FACADE else _rank(module, LAYERS)


def _imports(path: Path, name: str | None = None) -> list[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved against ``name``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                if name is None:
                    continue
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            # ``from pkg import mod`` imports the module pkg.mod where one exists
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            names += subs if len(subs) == len(node.names) else [base, *subs]
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(path, name) if m in MODULES and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_every_layer_package_has_modules():
    for folder in FOLDERS:
        assert any((ROOT / folder).rglob("*.py")), f"no modules under {folder}/"


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, path in MODULES.items():
        layer = layer_of(name)
        for module in _imports(path, name):
            target = layer_of(module)
            if target is not None and target > layer:
                upward.append(f"{path.relative_to(ROOT).as_posix()} imports {module}")
    assert not upward, "imports of a higher layer (registry < ntm < eval < experiments):\n" + "\n".join(upward)


def test_experiments_ranks_point_one_way():
    upward = []
    for name, path in MODULES.items():
        rank = _rank(name, EXPERIMENT_RANKS)
        if rank is None:
            continue
        for module in _imports(path, name):
            target = _rank(module, EXPERIMENT_RANKS)
            if target is not None and target > rank:
                upward.append(f"{path.relative_to(ROOT).as_posix()} imports {module}")
    assert not upward, "experiments/: library < bench < commands < cli, imported the other way:\n" + "\n".join(upward)


def test_registry_imports_none_of_the_other_layers():
    found = [f"{MODULES[n].relative_to(ROOT).as_posix()} imports {m}" for n in MODULES if layer_of(n) == 0
             for m in _imports(MODULES[n], n) if layer_of(m) not in (None, 0)]
    assert not found, "\n".join(found)


def test_registry_names_its_own_modules_relatively():
    """registry/ imports its own modules as ``.core``/``.cli``, never ``ntm.registry.*``: read by folder (as the
    repository's layers are), an absolute ``ntm.`` import from registry/ would point at the layer above it."""
    found = [f"{path.relative_to(ROOT).as_posix()}: {line.strip()}" for path in sorted((ROOT / "registry").rglob("*.py"))
             for line in path.read_text().splitlines() if line.strip().startswith(("from ntm", "import ntm"))]
    assert not found, "\n".join(found)


def test_no_import_of_the_old_top_level_names():
    """``experiments``, ``eval`` and ``registry`` are not installed under those names (a user's folders are)."""
    found = [f"{MODULES[n].relative_to(ROOT).as_posix()} imports {m}" for n in MODULES
             for m in _imports(MODULES[n], n) if m.split(".")[0] in ("experiments", "eval", "registry")]
    assert not found, "\n".join(found)


def test_no_import_cycle_anywhere():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_imported_by_a_string():
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            fn = node.func
            called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if called in ("__import__", "import_module"):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} imports {node.args[0].value!r}")
    assert not found, "\n".join(found)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from ntm.experiments.config import Experiment\n"
                      "    import ntm.eval.metrics as m\n")
    assert _imports(module) == ["os", "ntm.experiments.config", "ntm.eval.metrics"]


def test_the_walker_resolves_relative_imports_and_submodules(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from . import ema\nfrom .checkpoint import CheckpointManager\nfrom ..data import base\n")
    assert _imports(probe, "ntm.train.probe") == ["ntm.train.ema", "ntm.train.checkpoint", "ntm.data.base"]


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
