"""labkit.course.notebook_format: headings, solutions and exercises, never inside a fence or a
<details> block; the runner, catch_up and slides read a toy notebook the same way."""

import nbformat
import pytest

from labkit import LabkitError
from labkit.course import catch_up, notebook_format, runner, slides

SECTION = """## 1. Setup
Some text.

```python
## a comment in a fence, not a section
x = 1
```
"""

EXERCISES = """## Exercises

### ⭐ Warm-up
Do step 1.
<details><summary>Solution</summary>

```python
### step 2
## still code
y = 2
```
### not a heading either: inside details
</details>

### ⭐⭐ Practice
Explain.
<details><summary>Solution</summary>

In words only.
</details>

### ⭐⭐⭐ Challenge
<details><summary>Solution</summary>

```bash
echo not python
```
```python
z = 3
```
</details>
"""


def _toy() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 97 · Toy"),
        nbformat.v4.new_code_cell("## a comment in a code cell\nFAST = True"),
        nbformat.v4.new_markdown_cell(SECTION),
        nbformat.v4.new_code_cell("a = 6"),
        nbformat.v4.new_markdown_cell(EXERCISES),
        nbformat.v4.new_code_cell('check("97.3", answer)'),
        nbformat.v4.new_markdown_cell("## Summary\n- done"),
    ]
    return nb


def test_headings_skip_fences_and_details():
    assert notebook_format.headings(SECTION) == ["1. Setup"]
    assert notebook_format.headings(EXERCISES, level=3) == [
        "⭐ Warm-up",
        "⭐⭐ Practice",
        "⭐⭐⭐ Challenge",
    ]
    assert notebook_format.sections(_toy()) == ["1. Setup", "Exercises", "Summary"]


def test_solutions_are_the_python_fences_of_each_details_block():
    assert notebook_format.solution_codes(EXERCISES) == [
        "### step 2\n## still code\ny = 2\n",
        "",  # in words only
        "z = 3\n",  # the bash fence is not run
    ]
    assert notebook_format.exercise_solutions(_toy()) == [
        ("⭐ Warm-up", "### step 2\n## still code\ny = 2\n"),
        ("⭐⭐⭐ Challenge", "z = 3\n"),
    ]


def test_split_cuts_before_headings_and_solutions_only_outside_blocks():
    pieces = notebook_format.split(EXERCISES)
    starts = [p.splitlines()[0] for p in pieces]
    assert starts == [
        "## Exercises",
        "### ⭐ Warm-up",
        "<details><summary>Solution</summary>",
        "### ⭐⭐ Practice",
        "<details><summary>Solution</summary>",
        "### ⭐⭐⭐ Challenge",
        "<details><summary>Solution</summary>",
    ]
    assert "### step 2" in pieces[2] and "### not a heading either" in pieces[2]
    assert "".join(pieces).replace("\n", "") == EXERCISES.replace("\n", "")


def test_exercises_have_their_tier_and_the_cells_under_them():
    found = notebook_format.exercises(_toy())
    assert [(e.title, e.tier) for e in found] == [
        ("⭐ Warm-up", 1),
        ("⭐⭐ Practice", 2),
        ("⭐⭐⭐ Challenge", 3),
    ]
    assert "### step 2" in found[0].text  # the fenced line stays in its solution
    assert 'check("97.3"' in found[2].text  # the code cell after the last exercise
    assert notebook_format.tier("Summary") == 0


def test_runner_catch_up_and_slides_read_the_toy_the_same_way(tmp_path):
    nb = _toy()
    copy = runner.with_solutions(nb, name="97")
    appended = [c.source for c in copy.cells[len(nb.cells) :]]
    assert [s.splitlines()[0] for s in appended] == [
        f"{runner.SOLUTION_MARK} 97 ⭐ Warm-up",
        f"{runner.SOLUTION_MARK} 97 ⭐⭐⭐ Challenge",
    ]
    # catch_up: "step 2" is no section, so nothing is found for it
    assert catch_up.cells_before(nb, "Exercises") == [
        "## a comment in a code cell\nFAST = True",
        "a = 6",
    ]
    path = tmp_path / "97_toy.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(
        LabkitError, match=r"unknown section 'step 2'; accepted: 1\. Setup, Exercises, Summary$"
    ):
        catch_up.run_until(path, "step 2", namespace={})
    structured = slides.structure(_toy(), "97_toy.ipynb", run_seconds=10)
    kinds = {
        c.source.splitlines()[0]: c.metadata["slideshow"]["slide_type"] for c in structured.cells
    }
    assert kinds["### ⭐ Warm-up"] == "subslide" and kinds["## Summary"] == "slide"
    assert "### step 2" not in kinds and "## a comment in a fence, not a section" not in kinds
    exercises_section = next(s for s in slides.sections(structured) if s.kind == "exercises")
    assert exercises_section.tiers == ["⭐", "⭐⭐", "⭐⭐⭐"]


def test_exercise_solutions_are_found_under_their_headings():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(EXERCISES)]
    assert notebook_format.exercise_solutions(nb) == [
        ("⭐ Warm-up", "### step 2\n## still code\ny = 2\n"),
        ("⭐⭐⭐ Challenge", "z = 3\n"),
    ]
    before = nbformat.v4.new_markdown_cell(
        "<details><summary>Solution</summary>\n\n```python\nw = 0\n```\n</details>"
    )
    nb.cells.insert(0, before)
    assert notebook_format.exercise_solutions(nb)[0] == (notebook_format.NO_HEADING, "w = 0\n")


def test_committed_notebooks_have_a_solution_per_tier():
    for path in runner.course_notebooks()[1:]:  # 00 is the tour: no exercises
        titles = [
            t for t, _ in notebook_format.exercise_solutions(nbformat.read(path, as_version=4))
        ]
        assert len(titles) >= 3 and {"⭐", "⭐⭐", "⭐⭐⭐"} <= {t.split()[0] for t in titles}, path
