"""Committed notebooks are clean top-to-bottom runs that follow the course conventions."""

import nbformat
import pytest

from labkit import course

NOTEBOOKS = course.course_notebooks()
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
    assert course.strip_volatile(nbformat.from_dict(nb)) == nb, f"{path.name}: volatile metadata"


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
