import datetime
import json

import nbformat
import pytest

from labkit import LabkitError
from labkit.course import runner


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_run_course_writes_report_and_flags_failures(tmp_path, capsys):
    good = _notebook(tmp_path / "01_good.ipynb", ["x = 6 * 7", "print(x)"])
    bad = _notebook(tmp_path / "02_bad.ipynb", ["raise ValueError('boom')"])
    out = tmp_path / "build"
    report = runner.run_course([good, bad], out_dir=out, timeout=60)
    saved = json.loads((out / "course-report.json").read_text())
    assert saved == report
    assert [r["notebook"] for r in saved["notebooks"]] == ["01_good.ipynb", "02_bad.ipynb"]
    assert saved["notebooks"][0]["status"] == "ok"
    assert saved["notebooks"][0]["date"] == datetime.date.today().isoformat()  # the map's date
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
    runner.run_course([bad], inplace=True, out_dir=tmp_path / "build", timeout=60)
    assert bad.read_bytes() == before
    good = _notebook(tmp_path / "04_good.ipynb", ["print('hi')"])
    runner.run_course([good], inplace=True, out_dir=tmp_path / "build", timeout=60)
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
    runner.strip_volatile(nb)
    assert nb.cells[0].metadata == {"slideshow": {"slide_type": "slide"}, "tags": ["parameters"]}
    assert "widgets" not in nb.metadata


def test_strip_volatile_joins_consecutive_chunks_of_one_stream_only():
    """A print's text and its newline can arrive as two chunks; a figure between keeps them apart."""
    out, err = nbformat.v4.new_output, "stream"
    cell = nbformat.v4.new_code_cell("print('a'); print('b')")
    cell.outputs = [
        out(err, name="stdout", text="row 1"),
        out(err, name="stdout", text=["\n", "row 2\n"]),
        out(err, name="stderr", text="warn\n"),
        out(err, name="stdout", text="row 3\n"),
        out("display_data", data={"text/plain": "<Figure>"}),
        out(err, name="stdout", text="row 4\n"),
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell]
    runner.strip_volatile(nb)
    kinds = [(o.output_type, o.get("name"), o.get("text")) for o in nb.cells[0].outputs]
    assert kinds == [
        ("stream", "stdout", "row 1\nrow 2\n"),
        ("stream", "stderr", "warn\n"),
        ("stream", "stdout", "row 3\n"),
        ("display_data", None, None),
        ("stream", "stdout", "row 4\n"),
    ]


def test_cli_rejects_missing_notebook(tmp_path):
    with pytest.raises(LabkitError, match="no such notebook"):
        runner.cli_main([str(tmp_path / "99_missing.ipynb")])


EXERCISES = """## Exercises
### ⭐ Warm-up
Print x.
<details><summary>Solution</summary>

```python
print(x + 1)
```
</details>

### ⭐⭐ Practice
Divide.
<details><summary>Solution</summary>

```python
print(x / 0)
```
Dividing by zero raises.
</details>
"""


def test_run_exercises_runs_each_solution_after_the_notebook(tmp_path):
    path = _notebook(tmp_path / "05_ex.ipynb", ["x = 41"])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(EXERCISES))
    nbformat.write(nb, path)
    before = path.read_bytes()
    rows = runner.run_exercises(path, timeout=60)
    assert [r["status"] for r in rows][0] == "ok"
    assert rows[1]["status"].startswith("FAILED: ZeroDivisionError")
    assert path.read_bytes() == before  # nothing stored in the notebook


def test_cli_rejects_exercises_with_inplace():
    with pytest.raises(LabkitError, match="do not go together"):
        runner.cli_main(["--exercises", "--inplace"])


def test_with_solutions_appends_each_solution_and_keeps_outputs():
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x = 41", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", text="kept\n")]
    nb.cells = [code, nbformat.v4.new_markdown_cell(EXERCISES)]
    copy = runner.with_solutions(nb, name="05")
    assert len(copy.cells) == 4 and len(nb.cells) == 2  # the original is untouched
    assert copy.cells[0].outputs[0]["text"] == "kept\n"
    assert copy.cells[2].source.startswith(f"{runner.SOLUTION_MARK} 05 ⭐ Warm-up\n")
    assert copy.cells[3].source.endswith("print(x / 0)\n")


def _nbval(path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    cmd += ["--nbval-lax", "--nbval-current-env", "-o", "addopts="]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=path.parent, timeout=300)


def test_a_broken_solution_fails_nbval_on_the_copy(tmp_path):
    """What make test does: nbval on the copies runs the notebook once, then its solutions."""
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(6 * 7)", execution_count=1)
    checked.outputs = [nbformat.v4.new_output("stream", text="42\n")]
    good = "### ⭐ Warm-up\n<details><summary>Solution</summary>\n\n```python\nassert 6 * 7 == 42\n```\n</details>"
    for name, solution in [
        ("01_good.ipynb", good),
        ("02_broken.ipynb", good.replace("== 42", "== 43")),
    ]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [checked, nbformat.v4.new_markdown_cell(solution)]
        nbformat.write(nb, tmp_path / name)
    copies = runner.write_solution_copies(
        [tmp_path / "01_good.ipynb", tmp_path / "02_broken.ipynb"], tmp_path / "nbval"
    )
    run = _nbval(copies[0].parent)  # one nbval run over both copies, as make test does
    assert "1 failed, 3 passed" in run.stdout, run.stdout[-2000:]
    assert "02_broken.ipynb::Cell 1" in run.stdout and "AssertionError" in run.stdout
    assert run.returncode != 0


def test_a_one_notebook_run_updates_its_row_and_keeps_the_others(tmp_path):
    a = _notebook(tmp_path / "01_a.ipynb", ["1"])
    b = _notebook(tmp_path / "02_b.ipynb", ["2"])
    out = tmp_path / "build"
    runner.run_course([a, b], out_dir=out, timeout=60)
    _notebook(b, ["raise ValueError('now broken')"])
    report = runner.run_course([b], out_dir=out, timeout=60)
    assert [r["notebook"] for r in report["notebooks"]] == ["01_a.ipynb", "02_b.ipynb"]
    assert report["notebooks"][0]["status"] == "ok" and report["failed"] == 1
    assert json.loads((out / "course-report.json").read_text()) == report
    a.unlink()  # a notebook that no longer exists leaves the report
    assert [r["notebook"] for r in runner.merge_report(report, [], tmp_path)["notebooks"]] == [
        "02_b.ipynb"
    ]


def test_committed_notebooks_find_files_through_repo_root_not_relative_paths():
    """make test runs copies from build/nbval/: a '../data' path would point elsewhere there."""
    for path in runner.course_notebooks():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert "../" not in cell.source, f"{path.name}: use labkit.REPO_ROOT, not '../'"


def test_cli_with_solutions_writes_copies(tmp_path, capsys):
    path = _notebook(tmp_path / "06_x.ipynb", ["x = 1"])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(EXERCISES))
    nbformat.write(nb, path)
    assert runner.cli_main([str(path), "--with-solutions", str(tmp_path / "copies")]) == 0
    copy = nbformat.read(tmp_path / "copies" / "06_x.ipynb", as_version=4)
    assert len(copy.cells) == 4 and "2 solutions appended" in capsys.readouterr().out
    with pytest.raises(LabkitError, match="--exercises and --with-solutions do not go together"):
        runner.cli_main(["--exercises", "--with-solutions", str(tmp_path)])
