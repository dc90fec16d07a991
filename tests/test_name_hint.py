"""labkit.course.name_hint: a NameError in notebook code becomes one line saying which cell to run first."""

import json

import pytest
from IPython.core.interactiveshell import InteractiveShell

from labkit.course import name_hint, session


@pytest.fixture
def shell():
    sh = InteractiveShell.instance()
    sh.set_custom_exc((), None)
    yield sh
    sh.set_custom_exc((), None)
    sh.user_ns.pop("__session__", None)


def _run(shell, code, capsys):
    """Run a cell; return its result and the traceback lines IPython shows for it."""
    shown = []
    real = shell._showtraceback
    shell._showtraceback = lambda etype, value, stb: shown.extend(stb)
    try:
        result = shell.run_cell(code)
    finally:
        shell._showtraceback = real
    capsys.readouterr()
    return result, "\n".join(shown)


def test_name_error_in_a_cell_says_run_the_cells_above(shell, capsys):
    assert name_hint.install(shell)
    result, shown = _run(shell, "model.train()", capsys)
    assert isinstance(result.error_in_exec, NameError)  # still an error: Run All stops here
    lines = [line for line in shown.strip().splitlines() if line.strip()]
    assert lines == [f"NameError: name 'model' is not defined: {name_hint.HINT}"]


def test_the_hint_names_the_cell_that_sets_the_name(shell, capsys, tmp_path):
    nb = tmp_path / "lesson.ipynb"
    sources = ["import torch", "# markdown-like comment", "model, tok = load(), 2", "model.train()"]
    nb.write_text(
        json.dumps(
            {
                "cells": [{"cell_type": "markdown", "source": "# Title"}]
                + [{"cell_type": "code", "source": s} for s in sources]
            }
        )
    )
    shell.user_ns["__session__"] = str(nb)
    name_hint.install(shell)
    _, shown = _run(shell, "model.train()", capsys)
    assert "it is set in code cell 3: model, tok = load(), 2" in shown
    assert name_hint.defining_cell(nb, "torch") == (1, "import torch")
    assert name_hint.defining_cell(nb, "nothing") is None


def test_name_errors_inside_library_code_keep_their_traceback(shell, capsys, tmp_path):
    (tmp_path / "buggy_module.py").write_text("def f():\n    return undefined_x\n")
    name_hint.install(shell)
    _, shown = _run(shell, f"import sys; sys.path.insert(0, {str(tmp_path)!r})", capsys)
    _, shown = _run(shell, "import buggy_module\nbuggy_module.f()", capsys)
    assert "undefined_x" in shown and "buggy_module.py" in shown and name_hint.HINT not in shown
    _, shown = _run(shell, "def g():\n    return undefined_z\ng()", capsys)
    assert name_hint.HINT in shown  # a function defined in the notebook is notebook code


def test_install_outside_ipython_does_nothing_and_setup_installs_it(shell, monkeypatch):
    assert name_hint.install(object()) is False
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    session.setup(threads=1)
    assert shell.custom_exceptions == (NameError,)
