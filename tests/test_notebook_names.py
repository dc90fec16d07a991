"""Every labkit name a notebook's code uses exists, in every cell and every exercise solution.

CI runs the notebooks on CPUs, where a CUDA-only cell skips before it reaches its names (a
``hardware.requires_cuda`` guard): a renamed or misplaced function there would fail only on the
first learner's GPU. So the names are checked here from the source, without running the cells.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

from labkit.course import notebook_format

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _sources(path: Path) -> list[str]:
    """The code cells of a notebook and the Python solutions under its exercises."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    markdown = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    solutions = [s for text in markdown for s in notebook_format.solution_codes(text)]
    return [_python(src) for src in code + solutions]


def _python(src: str) -> str:
    """The cell without IPython's magic and shell lines (``%...``, ``!...``), which are not Python."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines()
    )


def _labkit_imports(tree: ast.AST) -> tuple[dict[str, ModuleType], list[str]]:
    """Local names bound to labkit modules, and the problems with the imports themselves."""
    modules, problems = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "labkit":
                    mod = importlib.import_module(alias.name)
                    if alias.asname:
                        modules[alias.asname] = mod
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "labkit":
            parent = importlib.import_module(node.module)
            for alias in node.names:
                name = alias.asname or alias.name
                try:
                    modules[name] = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    if not hasattr(parent, alias.name):
                        problems.append(f"from {node.module} import {alias.name}: no such name")
    return modules, problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_labkit_name_a_notebook_uses_exists(path):
    sources = _sources(path)
    modules: dict[str, ModuleType] = {}
    problems: list[str] = []
    trees = [ast.parse(src) for src in sources]
    for tree in trees:  # names imported in one cell are used in later ones
        found, bad = _labkit_imports(tree)
        modules |= found
        problems += bad
    for tree in trees:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and not hasattr(modules[node.value.id], node.attr)
            ):
                problems.append(f"{node.value.id}.{node.attr} (line {node.lineno}): no such name")
    assert not problems, f"{path.name}: " + "; ".join(problems)
