"""labkit's shape (issue 27): small modules and functions, names that shadow no library the
course uses, and a map in docs/architecture.md that lists every module. The layer rule itself is
checked by ``lint-imports`` in ``make lint`` (pyproject.toml, ``[tool.importlinter]``)."""

from __future__ import annotations

import ast
import re

import pytest

from labkit import REPO_ROOT

PACKAGE = REPO_ROOT / "labkit"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120
#: libraries the course imports: no labkit module or subpackage may take their names
LIBRARIES = {
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna", "datasets",
    "evaluate", "tokenizers", "safetensors", "numpy", "matplotlib", "sklearn", "nbformat",
    "nbclient", "ipywidgets", "psutil", "huggingface_hub", "trl", "galore_torch", "torchao",
}  # fmt: skip


#: modules still to split (issue 27, in progress): strict, so a fixed one must leave this list
TOO_LONG: set[str] = set()
LONG_FUNCTIONS: set[str] = set()


def _name(path):
    return path.relative_to(REPO_ROOT).as_posix()


def _todo(paths, names):
    todo = pytest.mark.xfail(strict=True, reason="issue 27: still to split")
    return [pytest.param(p, marks=todo) if _name(p) in names else p for p in paths]


@pytest.mark.parametrize("path", _todo(MODULES, TOO_LONG), ids=_name)
def test_module_is_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines (> {MAX_MODULE_LINES})"


@pytest.mark.parametrize("path", _todo(MODULES, LONG_FUNCTIONS), ids=_name)
def test_functions_are_short(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{_name(path)}: {long}"


def test_no_labkit_name_shadows_a_library():
    names = {p.stem for p in MODULES} | {p.parent.name for p in MODULES}
    assert not names & LIBRARIES, sorted(names & LIBRARIES)


def _architecture() -> str:
    return (REPO_ROOT / "docs" / "architecture.md").read_text()


def test_architecture_map_lists_every_module():
    listed = set(re.findall(r"`(labkit(?:\.\w+)+)`", _architecture()))
    modules = {
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
        for p in MODULES
        if p.name not in {"__init__.py", "__main__.py"}
    }
    assert not modules - listed, f"not in docs/architecture.md: {sorted(modules - listed)}"


_IMPORT_RE = re.compile(r"^[ \t]*from (labkit[\w.]*) import (\([^)]*\)|[^\n#]+)", re.M)


def _reexported(package: str) -> set[str]:
    """The submodules a labkit package's ``__init__`` imports names from."""
    init = REPO_ROOT.joinpath(*package.split("."), "__init__.py")
    found = re.findall(
        r"^from (labkit[\w.]*) import", init.read_text() if init.is_file() else "", re.M
    )
    return {m for m in found if m.startswith(package + ".")}


def notebook_importers() -> dict[str, set[str]]:
    """Module -> the course notebooks (``NN``) whose code cells import it: ``from P import m``
    names module ``P.m``; importing a package counts for the submodules it re-exports."""
    import nbformat

    users: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for base, names in _IMPORT_RE.findall(code):
            for name in re.findall(r"(\w+)(?:\s+as\s+\w+)?", names.strip("()")):
                full = f"{base}.{name}"
                is_module = REPO_ROOT.joinpath(*full.split(".")).with_suffix(".py").is_file()
                is_package = REPO_ROOT.joinpath(*full.split("."), "__init__.py").is_file()
                hits = {full} if is_module else _reexported(full) if is_package else {base}
                for module in hits:
                    users.setdefault(module, set()).add(path.name[:2])
    return users


def notebook_column(numbers: set[str], everyone: set[str]) -> str:
    """``{"00","01","02","05","06"}`` -> ``"00-02, 05, 06"``; ``"all"`` for every notebook, ``"—"``
    for none."""
    if numbers == everyone:
        return "all"
    runs: list[list[int]] = []
    for n in sorted(int(x) for x in numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    parts = [
        f"{r[0]:02d}-{r[-1]:02d}" if len(r) > 2 else ", ".join(f"{n:02d}" for n in r) for r in runs
    ]
    return ", ".join(parts) or "—"


def test_architecture_map_names_the_notebooks_that_import_each_module():
    everyone = {p.name[:2] for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    users = notebook_importers()
    rows = re.findall(r"^\| `(labkit(?:\.\w+)+)` \|.*\| ([^|]+) \|$", _architecture(), re.M)
    wrong = {
        module: (column.strip(), notebook_column(users.get(module, set()), everyone))
        for module, column in rows
        if column.strip() != notebook_column(users.get(module, set()), everyone)
    }
    assert not wrong, f"docs/architecture.md's notebooks column (listed, imported by): {wrong}"
