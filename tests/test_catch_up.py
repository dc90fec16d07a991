"""labkit.course.catch_up: rebuild a dead kernel's state up to a section."""

import nbformat
import pytest

from labkit import LabkitError
from labkit.course import catch_up, notebook_format, runner


def _toy(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 98 · Toy"),
        nbformat.v4.new_code_cell("FAST = True"),
        nbformat.v4.new_markdown_cell("## 1. First\ntext"),
        nbformat.v4.new_code_cell("a = 6"),
        nbformat.v4.new_markdown_cell("## 2. Second"),
        nbformat.v4.new_code_cell("b = a * 7"),
        nbformat.v4.new_markdown_cell("## 10. Tenth"),
        nbformat.v4.new_code_cell("raise ValueError('boom')"),
        nbformat.v4.new_markdown_cell("## Exercises"),
    ]
    nbformat.write(nb, path)
    return path


def test_run_until_runs_the_cells_above_the_section(tmp_path, capsys):
    path = _toy(tmp_path / "98_toy.ipynb")
    ns = {}
    assert catch_up.run_until(path, "2", namespace=ns) == 2
    assert ns["a"] == 6 and "b" not in ns
    assert "ran 2 code cells above section '2'" in capsys.readouterr().out
    ns = {}
    assert catch_up.run_until(path, "10", namespace=ns) == 3 and ns["b"] == 42  # "1" != "10"


def test_run_until_names_the_failing_cell_and_unknown_sections(tmp_path):
    path = _toy(tmp_path / "98_toy.ipynb")
    with pytest.raises(LabkitError, match=r"code cell 4 \(\"raise ValueError\('boom'\)\"\) failed"):
        catch_up.run_until(path, "exercises", namespace={})
    with pytest.raises(LabkitError, match=r"unknown section '7'; accepted: 1\. First, 2\. Second"):
        catch_up.run_until(path, "7", namespace={})


def test_find_notebook_by_number_and_every_course_notebook_has_sections():
    first = runner.course_notebooks()[0]
    assert catch_up.find_notebook("00") == first
    with pytest.raises(LabkitError, match="unknown notebook '99'"):
        catch_up.find_notebook("99")
    for path in runner.course_notebooks():
        assert notebook_format.sections(nbformat.read(path, as_version=4)), path.name
