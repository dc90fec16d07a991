"""Committed notebooks are clean top-to-bottom runs that follow the course conventions."""

import re

import nbformat
import pytest

from labkit.course import runner

NOTEBOOKS = runner.course_notebooks()
IDS = [p.name for p in NOTEBOOKS]


def test_course_map_has_notebook_zero():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_and_tour.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_as_clean_in_order_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not one in-order run: {counts}"
    errors = [c.source[:60] for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored errors in {errors}"
    assert runner.strip_volatile(nbformat.from_dict(nb)) == nb, f"{path.name}: volatile metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_follows_conventions(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.name[:2]}")
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in params.metadata.get("tags", []), (
        "first code cell must be the parameters cell"
    )
    assert "FAST" in params.source
    assert all("slideshow" in c.metadata for c in nb.cells), "every cell carries slide metadata"
    text = "\n".join(c.source for c in nb.cells)
    if path.name != "00_setup_and_tour.ipynb":
        assert "MODEL_ID" in params.source
        for tier in ("⭐ Warm-up", "⭐⭐ Practice", "⭐⭐⭐ Challenge"):
            assert tier in text, f"{path.name}: missing exercise tier {tier}"
        assert "<details>" in text
    assert "# CHECK" in text, f"{path.name}: no check cell"
    assert "## Summary" in text


ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp|Users|private|var/folders)/")
NOISE = ("FutureWarning", "DeprecationWarning", "TqdmWarning", "IProgress not found")
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\||\d+/\d+ \[\d+:\d+<|it/s\]|s/it\]")
MAX_TABLE_ROWS = 12


def _output_texts(nb):
    """(cell index, kind, text) of every stored output: streams, plain/HTML results, errors."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                yield i, out.name, out.text
            elif out.output_type in ("execute_result", "display_data"):
                for mime in ("text/plain", "text/html", "text/markdown"):
                    if mime in out.get("data", {}):
                        yield i, mime, out.data[mime]
            elif out.output_type == "error":
                yield i, "error", "\n".join(out.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_are_clean(path):
    """No machine paths, warnings of deprecated calls, progress bars or long tables in outputs."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, kind, text in _output_texts(nb):
        if m := ABSOLUTE_PATH.search(text):
            problems.append(f"cell {i}: absolute path {text[m.start() : m.start() + 40]!r}")
        problems += [f"cell {i}: {word}" for word in NOISE if word in text]
        if kind == "stderr" and (PROGRESS_BAR.search(text) or "\r" in text):
            problems.append(f"cell {i}: progress-bar fragment {text.strip()[:40]!r}")
        if kind == "text/html" and text.count("<tr") > MAX_TABLE_ROWS + 1:
            problems.append(f"cell {i}: HTML table with {text.count('<tr') - 1} rows")
    assert not problems, f"{path.name}: " + "; ".join(problems[:8])


def test_hygiene_check_catches_each_problem(tmp_path):
    """The check above fails on each kind of problem (so it is not a test that cannot fail)."""
    bad = [
        nbformat.v4.new_output("stream", name="stdout", text="saved to /work/main/build/x\n"),
        nbformat.v4.new_output("stream", name="stderr", text="FutureWarning: old\n"),
        nbformat.v4.new_output("stream", name="stderr", text=" 40%|████      | 4/10 [00:01<00:02]"),
        nbformat.v4.new_output(
            "display_data", data={"text/html": "<table>" + "<tr><td>1</td></tr>" * 30 + "</table>"}
        ),
    ]
    for out in bad:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[out])])
        path = tmp_path / "99_bad.ipynb"
        nbformat.write(nb, path)
        with pytest.raises(AssertionError):
            test_stored_outputs_are_clean(path)
    good = nbformat.v4.new_output("stream", name="stdout", text="build/02_recipe, 3/4 done\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[good])])
    nbformat.write(nb, tmp_path / "98_ok.ipynb")
    test_stored_outputs_are_clean(tmp_path / "98_ok.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_cites_only_files_the_repo_has(path):
    """A notebook that points at docs/formulas.md or docs/pitfalls.md finds them; no bare facts.md."""
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    for name in re.findall(r"docs/[\w-]+\.md", text):
        assert (path.parent.parent / name).exists(), f"{path.name} cites missing {name}"
    bare = re.findall(r"(?<!docs/)\b(?:facts|pitfalls)\.md", text)
    assert not bare, f"{path.name} cites {bare} without a path the repo has"
