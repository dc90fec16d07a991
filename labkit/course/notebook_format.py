"""The course's notebook format (``docs/notebook-conventions.md``), read in one place.

A markdown cell holds headings (``## 1. ...`` sections, ``### ⭐ Warm-up`` exercises), prose,
code fences and collapsed solutions::

    <details><summary>Solution</summary>

    ```python
    ...
    ```
    </details>

A line that looks like a heading is one only outside code fences and outside ``<details>``
blocks: ``## not a heading`` inside a solution's fence is Python, not a section. The runner
(solutions to run), ``catch_up`` (sections to stop before) and ``slides`` (where to cut a cell
into slides) all read the format through this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from labkit import LabkitError

HEADING_RE = re.compile(r"^(?P<hashes>#{1,6})[ \t]+(?P<title>\S.*?)\s*$")
SOLUTION_START = "<details><summary>Solution"
#: Title given to a solution that comes before any ``###`` heading.
NO_HEADING = "exercise"


def read(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """The notebook at ``path``, or one line saying it is missing or not a notebook (cut or
    empty JSON, another JSON shape, not UTF-8): what ``course``, ``slides`` and ``catch_up``
    all refuse the same way."""
    path = Path(path)
    try:
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise LabkitError(f"no such notebook: {path}") from None
    except IsADirectoryError:
        raise LabkitError(f"{path} is a folder, not a notebook") from None
    except Exception as err:  # JSON, schema or encoding errors: all say "not a notebook"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise LabkitError(
            f"{path.name} is not a notebook ({first}); accepted: .ipynb files saved by Jupyter"
        ) from None


@dataclass(frozen=True)
class Line:
    """One line of a markdown cell and where it stands."""

    offset: int  # character offset of the line in the cell's source
    text: str  # the line, with its newline
    outside: bool  # not inside a code fence, not inside a <details> block (opening lines are)
    fence: bool  # inside a code fence (the fence lines themselves excluded)


def lines(source: str) -> Iterator[Line]:
    """The lines of ``source`` with their fence / ``<details>`` state before each line."""
    offset, fence, details = 0, False, 0
    for text in source.splitlines(keepends=True):
        stripped = text.strip()
        is_fence_line = stripped.startswith("```")
        yield Line(offset, text, not fence and details == 0, fence and not is_fence_line)
        if is_fence_line:
            fence = not fence
        elif not fence:
            details = max(0, details + stripped.count("<details") - stripped.count("</details>"))
        offset += len(text)


def heading(line: Line) -> tuple[int, str] | None:
    """``(level, title)`` if ``line`` is a heading (outside fences and ``<details>``)."""
    m = HEADING_RE.match(line.text) if line.outside else None
    return (len(m.group("hashes")), m.group("title")) if m else None


def first_heading(source: str) -> tuple[int, str] | None:
    """``(level, title)`` of the heading a markdown cell (or a piece of one) starts with."""
    first = next(lines(source.lstrip()), None)
    return heading(first) if first is not None else None


def headings(source: str, level: int | None = None) -> list[str]:
    """Titles of the headings in a markdown cell (of one ``level`` if given), in order."""
    found = [heading(line) for line in lines(source)]
    return [h[1] for h in found if h is not None and (level is None or h[0] == level)]


def is_solution_start(line: Line) -> bool:
    """Whether ``line`` opens a solution (``<details><summary>Solution``) outside other blocks."""
    return line.outside and line.text.lstrip().startswith(SOLUTION_START)


def split(source: str) -> list[str]:
    """``source`` cut before each ``##``/``###`` heading and each solution (the slide cuts);
    pieces are stripped of trailing newlines, empty pieces dropped."""
    pieces, start = [], 0
    for line in lines(source):
        h = heading(line)
        cut = (h is not None and h[0] in (2, 3)) or is_solution_start(line)
        if cut and line.offset > 0 and source[start : line.offset].strip():
            pieces.append(source[start : line.offset].rstrip("\n"))
            start = line.offset
    pieces.append(source[start:].rstrip("\n"))
    return [p for p in pieces if p.strip()]


def solution_codes(source: str) -> list[str]:
    """The python code of each solution in a markdown cell, in order (its ```` ```python ````
    fences joined; ``""`` for a solution in words only)."""
    codes: list[str] = []
    open_solution = python = False
    for line in lines(source):
        if is_solution_start(line):
            codes.append("")
            open_solution, python = True, False
        elif line.outside:  # the solution's <details> block has closed
            open_solution = False
        elif open_solution and line.fence:
            codes[-1] += line.text if python else ""
        elif open_solution and line.text.strip().startswith("```"):
            python = not python and line.text.strip() == "```python"
    return codes


def events(nb: nbformat.NotebookNode) -> list[tuple[int, str, int, str]]:
    """``(cell index, "heading" | "solution", level, title or code)`` over every markdown cell,
    in notebook order (a solution's level is 0)."""
    found: list[tuple[int, str, int, str]] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        codes = iter(solution_codes(cell.source))
        for line in lines(cell.source):
            h = heading(line)
            if h is not None:
                found.append((index, "heading", h[0], h[1]))
            elif is_solution_start(line):
                found.append((index, "solution", 0, next(codes)))
    return found


def sections(nb: nbformat.NotebookNode) -> list[str]:
    """The ``##`` section titles of a notebook, in order."""
    return [text for _, kind, level, text in events(nb) if kind == "heading" and level == 2]


def exercise_solutions(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """``(exercise heading, solution code)`` for every python solution, in notebook order; the
    heading is the last ``###`` above the solution (:data:`NO_HEADING` before any)."""
    found: list[tuple[str, str]] = []
    title = NO_HEADING
    for _, kind, level, text in events(nb):
        if kind == "heading" and level == 3:
            title = text
        elif kind == "solution" and text:  # a solution in words only has nothing to run
            found.append((title, text))
    return found


def tier(title: str) -> int:
    """An exercise heading's tier: its number of leading ⭐ (``"⭐⭐ Practice"`` -> 2; 0 if none)."""
    return len(title) - len(title.lstrip("⭐"))


@dataclass
class Exercise:
    """One ``###`` exercise of a notebook's ``## Exercises`` section."""

    title: str
    cells: list[str] = field(default_factory=list)  # sources of the cells (parts) under it

    @property
    def tier(self) -> int:
        return tier(self.title)

    @property
    def text(self) -> str:
        return "\n".join(self.cells)


def exercises(nb: nbformat.NotebookNode) -> list[Exercise]:
    """The ``###`` exercises under ``## Exercises``, each with the markdown and code below its
    heading up to the next heading (solutions included)."""
    found: list[Exercise] = []
    in_section = False
    for cell in nb.cells:
        markdown = cell.cell_type == "markdown"
        for part in split(cell.source) if markdown else [cell.source]:
            h = first_heading(part) if markdown else None
            if h is not None and h[0] <= 2:
                in_section = h[0] == 2 and h[1].lower().startswith("exercises")
                continue
            if not in_section:
                continue
            if h is not None and h[0] == 3:
                found.append(Exercise(h[1]))
            elif found:
                found[-1].cells.append(part)
    return found
