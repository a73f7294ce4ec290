"""Loading users' modules that register variants: ``ntm --plugin MODULE`` and the ``ntm.plugins`` entry points.

A plugin is an ordinary module whose import registers components, e.g.::

    @TRANSPORTERS.register("shift", ShiftConfig)
    class Shift(Transporter): ...

Registration does not depend on import order, so a plugin imported here
(after ``ntm`` and the experiment config) is accepted everywhere: in
``NTMConfig``, ``Experiment``, config files and on the command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "ntm.plugins"


class PluginError(ImportError):
    """A plugin module that could not be imported or registered; the message is one line."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _dotted_name(path: Path) -> str | None:
    """``pkg.mod`` for a file that lies inside a package on ``sys.path`` (or the working directory), else ``None``."""
    for root in [Path.cwd(), *(Path(p) for p in sys.path if p)]:
        try:
            relative = path.relative_to(root.resolve())
        except (ValueError, OSError):
            continue
        parts = relative.with_suffix("").parts
        if parts and all((root / Path(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            return ".".join(parts)
    return None


def _import_file(path: Path) -> None:
    """Import a ``.py`` file: by its dotted name when it is part of an importable package (so the same
    module is never imported twice under two names), else under a private name that shadows nothing."""
    dotted = _dotted_name(path)
    if dotted is not None:
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        importlib.import_module(dotted)
        return
    name = f"_ntm_plugin_{path.stem}_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def import_plugin(spec: str) -> None:
    """Import ``spec``: a dotted module name (the working directory is searched too) or a ``.py`` file."""
    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise PluginError(f"plugin file {spec} does not exist")
            _import_file(path)
            return
        cwd = str(Path.cwd())
        if cwd not in sys.path and "" not in sys.path:  # console scripts do not search the working directory
            sys.path.insert(0, cwd)
        importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside a user's module is reported in one line
        raise PluginError(f"plugin {spec!r} could not be loaded: {_one_line(e)}") from None


def load_plugins(modules: list[str] = (), *, installed: bool = True) -> None:
    """Import ``modules`` (in order), then every installed package's ``ntm.plugins`` entry point."""
    for spec in modules:
        import_plugin(spec)
    if not installed:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) could not be loaded: {_one_line(e)}") from None
