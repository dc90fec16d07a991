"""Bring a learner whose kernel died back to the section the room is on.

In a fresh kernel (Kernel > Restart), one cell::

    from labkit.course.catch_up import run_until
    run_until("05", "4")        # notebook 05, every code cell before section "## 4. ..."

runs the notebook's code cells above that section in the current kernel, as "Run All Above"
would, printing one line per section; then the learner goes on from the room's cell. The same
is JupyterLab's Run > Run All Above Selected Cell; this helper also works from any notebook
(a scratch one) and says which cell failed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat

from labkit import LabkitError, unknown
from labkit.course import notebook_format


def find_notebook(notebook: str | Path) -> Path:
    """``"05"``, ``"05_int8_quantization"`` or a path -> the notebook's path."""
    from labkit.course.runner import NOTEBOOKS_DIR, course_notebooks

    if not isinstance(notebook, str | os.PathLike):
        raise LabkitError(
            f"notebook must be a string such as '05' or a path, got {type(notebook).__name__} "
            f"{notebook!r}; accepted: {', '.join(p.stem[:2] for p in course_notebooks())}"
        )
    path = Path(notebook)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    matches = [p for p in course_notebooks(NOTEBOOKS_DIR) if p.stem.startswith(str(notebook))]
    if len(matches) != 1:
        raise unknown("notebook", str(notebook), [p.stem[:2] for p in course_notebooks()])
    return matches[0]


def cells_before(nb: nbformat.NotebookNode, heading: str) -> list[str]:
    """Sources of the code cells above the ``##`` section whose title starts with ``heading``
    (``"4"`` matches ``"4. Outliers and LLM.int8()"``; case-insensitive)."""
    if not isinstance(heading, str):
        raise LabkitError(
            f"heading must be a string such as '4' or '4. Outliers', got "
            f"{type(heading).__name__} {heading!r}; accepted: "
            f"{', '.join(notebook_format.sections(nb)) or '(no ## sections)'}"
        )
    want = heading.strip().lower()
    code: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            titles = [t.lower() for t in notebook_format.headings(cell.source, level=2)]
            if any(
                t == want
                or t.startswith(want + ".")
                or t.startswith(want + " ")
                or (len(want) > 2 and t.startswith(want))
                for t in titles
            ):
                return code
        elif cell.cell_type == "code" and cell.source.strip():
            code.append(cell.source)
    raise unknown("section", heading, notebook_format.sections(nb) or ["(no ## sections)"])


def run_until(notebook: str | Path, heading: str, namespace: dict | None = None) -> int:
    """Run the code cells of ``notebook`` above section ``heading`` here; returns how many ran.

    In IPython/Jupyter the cells run in the current kernel (magics included); elsewhere, or
    with ``namespace``, they are executed in that dict. Stops at the first failing cell with a
    one-line error naming it.
    """
    if namespace is not None and not isinstance(namespace, dict):
        raise LabkitError(
            f"namespace must be a dict (the globals the cells run in), got "
            f"{type(namespace).__name__}; accepted: a dict, or None for this kernel"
        )
    path = find_notebook(notebook)
    sources = cells_before(notebook_format.read(path), heading)
    shell = None
    if namespace is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:  # pragma: no cover - IPython ships with the course
            shell = None
        if shell is None:
            namespace = {"__name__": "__main__"}
    start = time.perf_counter()
    for k, src in enumerate(sources, 1):
        first = src.strip().splitlines()[0][:60]
        if shell is not None:
            result = shell.run_cell(src, silent=False, store_history=False)
            if not result.success:
                raise LabkitError(f"{path.name}: code cell {k} ({first!r}) failed; see above")
        else:
            try:
                exec(compile(src, f"{path.name}[{k}]", "exec"), namespace)
            except Exception as err:
                raise LabkitError(
                    f"{path.name}: code cell {k} ({first!r}) failed: {type(err).__name__}: {err}"
                ) from err
    print(
        f"{path.name}: ran {len(sources)} code cells above section {heading!r} "
        f"in {time.perf_counter() - start:.0f} s; continue from there"
    )
    return len(sources)
