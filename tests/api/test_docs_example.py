"""docs/api.md runs: its ``python`` code blocks, in order and in one namespace (like the cells of a notebook), against
a tiny trained digits-ntm run placed where the page says (``runs/digits-ntm``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```\s*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The code of every fenced block whose info string starts with ``python`` and does not say ``notest``."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match["info"].split()
        if words[:1] == ["python"] and "notest" not in words:
            blocks.append(match["code"])
    return blocks


def test_the_first_block_is_the_four_line_notebook_example():
    first = python_blocks(DOC.read_text())[0]
    lines = [line for line in first.splitlines() if line.strip()]
    assert len(lines) <= 4
    assert lines[0] == "import ntm"
    tree = ast.parse(first)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported == {"ntm"} and loaded - bound == {"ntm"}  # only ntm's names, nothing else imported


def test_the_code_blocks_of_docs_api_run(digits_run: Path, tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits-ntm").symlink_to(digits_run, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "labels: 10 is out of range" in out
    assert namespace["images"].shape == (16, 1, 8, 8) and namespace["nll"].shape == (16,)
    assert (tmp_path / "digits.safetensors").is_file()
