"""Notebook friendliness: a cell run before the cells it needs says which cell to run first.

Learners run cells out of order. A training cell run in a fresh kernel fails with a bare
``NameError: name 'model' is not defined``; :func:`install` (called by ``hardware.setup()``)
turns such an error, when it comes from notebook code, into one line that says what to do:

    NameError: name 'model' is not defined: run the cells above first (Run > Run All Above
    Selected Cell); it is set in cell 11: model = zoo.load_model(MODEL_ID)

NameErrors raised inside library code keep their full traceback (those are bugs, not order).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from labkit import compat

HINT = "run the cells above first (Run > Run All Above Selected Cell)"
_NAME = re.compile(r"name '([^']+)' is not defined")


def _notebook_path(shell: Any) -> Path | None:
    """The running notebook's file, where the kernel knows it (JupyterLab/VS Code set it)."""
    for candidate in (shell.user_ns.get("__session__"), os.environ.get("JPY_SESSION_NAME")):
        if isinstance(candidate, str) and candidate.endswith(".ipynb"):
            path = Path(candidate)
            if path.is_file():
                return path
    return None


def defining_cell(notebook: Path, name: str) -> tuple[int, str] | None:
    """(1-based code-cell number, line) of the first code cell that assigns, imports or defines
    ``name`` in ``notebook``; None if no cell does (or the file cannot be read)."""
    n = re.escape(name)
    pattern = re.compile(
        rf"^\s*(?:(?:def|class)\s+{n}\b"  # def model(...) / class Model
        rf"|(?:from\s+\S+\s+)?import\b.*\b{n}\s*(?:,|$)"  # import x as model / from m import model
        rf"|for\b.*\b{n}\b.*\bin\b"  # for model in ...
        rf"|with\b.*\bas\s+\(?{n}\b"  # with ... as model
        rf"|(?:[\w\s,*]*,\s*)?\*?{n}\s*(?:,[\w\s,*]*)?(?::[^=]*)?(?:[-+*/|&]|//)?=(?!=))"  # model, tok = ...
    )
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    number = 0
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        number += 1
        source = cell.get("source", "")
        for line in (source if isinstance(source, str) else "".join(source)).splitlines():
            if pattern.match(line):
                return number, line.strip()
    return None


def _from_notebook_code(shell: Any, tb: Any) -> bool:
    """Whether the innermost frame of ``tb`` runs notebook code (the kernel's namespace)."""
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals is shell.user_ns


def message(shell: Any, value: BaseException) -> str:
    """The one line shown for a NameError in notebook code."""
    text = f"NameError: {value}: {HINT}"
    match = _NAME.search(str(value))
    notebook = _notebook_path(shell)
    if match and notebook is not None:
        found = defining_cell(notebook, match.group(1))
        if found is not None:
            text += f"; it is set in code cell {found[0]}: {found[1][:80]}"
    return text


def _handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None):
    """IPython's custom-exception hook: it must show the error itself (and return its lines)."""
    if not _from_notebook_code(shell, tb):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return None
    stb = [message(shell, value)]
    compat.show_traceback(shell, etype, value, stb)  # ipykernel: the cell's error output
    return stb


def install(shell: Any = None) -> bool:
    """Install the NameError hint in an IPython shell (the running one by default); returns
    whether one was found. Outside IPython (scripts, ``python -m labkit``) it does nothing."""
    if shell is None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    shell.set_custom_exc((NameError,), _handler)
    return True
