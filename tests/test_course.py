import json

import nbformat
import pytest

from labkit import LabkitError, course


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_run_course_writes_report_and_flags_failures(tmp_path, capsys):
    good = _notebook(tmp_path / "01_good.ipynb", ["x = 6 * 7", "print(x)"])
    bad = _notebook(tmp_path / "02_bad.ipynb", ["raise ValueError('boom')"])
    out = tmp_path / "build"
    report = course.run_course([good, bad], out_dir=out, timeout=60)
    saved = json.loads((out / "course-report.json").read_text())
    assert saved == report
    assert [r["notebook"] for r in saved["notebooks"]] == ["01_good.ipynb", "02_bad.ipynb"]
    assert saved["notebooks"][0]["status"] == "ok"
    assert (
        saved["notebooks"][1]["status"].startswith("FAILED")
        and "boom" in saved["notebooks"][1]["status"]
    )
    assert saved["failed"] == 1
    assert saved["total_seconds"] == pytest.approx(
        sum(r["seconds"] for r in saved["notebooks"]), abs=0.2
    )
    executed = nbformat.read(out / "01_good.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert "total" in capsys.readouterr().out


def test_inplace_stores_outputs_but_never_overwrites_with_a_failed_run(tmp_path):
    bad = _notebook(tmp_path / "03_bad.ipynb", ["1/0"])
    before = bad.read_bytes()
    course.run_course([bad], inplace=True, out_dir=tmp_path / "build", timeout=60)
    assert bad.read_bytes() == before
    good = _notebook(tmp_path / "04_good.ipynb", ["print('hi')"])
    course.run_course([good], inplace=True, out_dir=tmp_path / "build", timeout=60)
    nb = nbformat.read(good, as_version=4)
    assert nb.cells[0].execution_count == 1 and nb.cells[0].outputs[0]["text"] == "hi\n"
    assert "execution" not in nb.cells[0].metadata


def test_strip_volatile_keeps_slides_and_tags_only():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata = {
        "slideshow": {"slide_type": "slide"},
        "tags": ["parameters"],
        "execution": {"iopub.status.busy": "2026"},
        "collapsed": True,
    }
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    course.strip_volatile(nb)
    assert nb.cells[0].metadata == {"slideshow": {"slide_type": "slide"}, "tags": ["parameters"]}
    assert "widgets" not in nb.metadata


def test_cli_rejects_missing_notebook(tmp_path):
    with pytest.raises(LabkitError, match="no such notebook"):
        course.cli_main([str(tmp_path / "99_missing.ipynb")])
