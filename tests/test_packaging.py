"""The wheel installs one package, ``ntm``: pyproject's package list names every package folder of the repository
(a folder it missed would be absent from a non-editable install), and maps registry/, eval/ and experiments/ under
``ntm``."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _installed_name(folder: Path, package_dir: dict[str, str]) -> str:
    rel = folder.relative_to(ROOT).parts
    for name, where in package_dir.items():
        if rel[: len(Path(where).parts)] == Path(where).parts:
            return ".".join([name, *rel[len(Path(where).parts):]])
    return ".".join(rel)


def test_every_package_folder_is_listed_and_nothing_else():
    config = _config()
    package_dir = config["package-dir"]
    folders = [init.parent for top in ("ntm", *package_dir.values()) for init in (ROOT / top).rglob("__init__.py")]
    expected = {_installed_name(f, package_dir) for f in folders}
    assert set(config["packages"]) == expected


def test_one_top_level_name():
    config = _config()
    assert {p.split(".")[0] for p in config["packages"]} == {"ntm"}
    assert config["package-dir"] == {"ntm.registry": "registry", "ntm.eval": "eval", "ntm.experiments": "experiments"}
