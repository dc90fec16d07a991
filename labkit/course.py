"""Run the course: execute notebooks headless, time them, store outputs cleanly.

``python -m labkit course`` executes every ``notebooks/NN_*.ipynb`` in a fresh kernel, in order,
writes the executed copies and ``build/course-report.json`` and prints a table; it exits 1 if any
notebook failed. ``--inplace`` stores the outputs back into ``notebooks/`` with volatile metadata
stripped: that is how the committed notebooks are produced (``make notebooks``).

``--exercises`` checks the exercise solutions instead (``make exercises``): each notebook runs with
its defaults, then every ``python`` block inside a ``<details><summary>Solution</summary>`` of its
markdown runs after it in the same kernel, as a learner would paste it; the report lists each
solution's status. Nothing is stored in ``notebooks/``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat

from labkit import REPO_ROOT, LabkitError

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BUILD_DIR = REPO_ROOT / "build"
NAME_RE = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
#: Cell metadata keys kept in committed notebooks; everything else (timings, ids of widgets,
#: collapsed state...) is volatile and stripped.
KEEP_CELL_METADATA = {"slideshow", "tags", "editable", "deletable"}


def course_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course's notebooks, ``NN_topic.ipynb``, in course order."""
    return sorted(p for p in folder.glob("*.ipynb") if NAME_RE.match(p.name))


def strip_volatile(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove metadata that changes from run to run (timings, kernel details, widget state)."""
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        for out in cell.get("outputs", []):
            if "metadata" in out:
                out.metadata = {}
    return nb


def execute(
    path: Path,
    timeout: int = 600,
    nb: nbformat.NotebookNode | None = None,
    allow_errors: bool = False,
) -> tuple[nbformat.NotebookNode, float, str | None]:
    """Execute one notebook in a fresh kernel with its own folder as working directory.

    ``nb``: the notebook to run (default: read from ``path``). ``allow_errors``: keep going after a
    failing cell (its error stays in the cell's outputs). Returns the executed notebook, the seconds
    it took, and the error (one line) or ``None``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4) if nb is None else nb
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        error = lines[-1][:300] if lines else "cell failed"
    except Exception as err:  # kernel died, timeout...
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    return nb, time.perf_counter() - start, error


SOLUTION_RE = re.compile(r"<details><summary>Solution</summary>(?P<body>.*?)</details>", re.S)
CODE_RE = re.compile(r"```python\n(?P<code>.*?)```", re.S)
HEADING_RE = re.compile(r"^###\s+(?P<title>.+)$", re.M)


def exercise_solutions(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """``(exercise heading, solution code)`` for every python solution, in notebook order."""
    found: list[tuple[str, str]] = []
    title = "exercise"
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        marks = [
            (m.start(), "h", m.group("title").strip()) for m in HEADING_RE.finditer(cell.source)
        ]
        marks += [
            (m.start(), "s", "".join(c.group("code") for c in CODE_RE.finditer(m.group("body"))))
            for m in SOLUTION_RE.finditer(cell.source)
        ]
        for _, kind, text in sorted(marks):
            if kind == "h":
                title = text
            elif text:  # a solution in words only has nothing to run
                found.append((title, text))
    return found


def run_exercises(path: Path, timeout: int = 600) -> list[dict]:
    """Run a notebook, then each of its solutions in the same kernel; one row per solution.

    A failing solution does not stop the others (the kernel goes on, as in JupyterLab).
    """
    nb = nbformat.read(path, as_version=4)
    solutions = exercise_solutions(nb)
    first = len(nb.cells)
    nb.cells += [nbformat.v4.new_code_cell(code) for _, code in solutions]
    nb, seconds, crashed = execute(path, timeout, nb=nb, allow_errors=True)
    errors = [
        next((o for o in c.get("outputs", []) if o.get("output_type") == "error"), None)
        for c in nb.cells
    ]
    if crashed is None and any(errors[:first]):
        bad = next(e for e in errors[:first] if e)
        crashed = f"the notebook itself failed: {bad['ename']}: {bad['evalue'][:200]}"
    rows = []
    for k, (title, _) in enumerate(solutions):
        err = errors[first + k]
        if crashed:
            status = f"NOT RUN: {crashed}"
        elif err:
            status = f"FAILED: {err['ename']}: {err['evalue'].splitlines()[0][:200] if err['evalue'] else ''}"
        else:
            status = "ok"
        rows.append({"notebook": path.name, "exercise": title, "status": status})
    print(f"{path.name}: {len(solutions)} solutions, {seconds:.0f} s with the notebook", flush=True)
    return rows


def report_table(rows: list[dict], total: float) -> str:
    """The course report as a text table: notebook, seconds, status, and the total."""
    width = max([len(r["notebook"]) for r in rows] + [8])
    lines = [f"{'notebook':<{width}}  {'seconds':>8}  status"]
    lines += [f"{r['notebook']:<{width}}  {r['seconds']:>8.1f}  {r['status']}" for r in rows]
    lines.append(f"{'total':<{width}}  {total:>8.1f}")
    return "\n".join(lines)


def run_course(
    paths: list[Path], inplace: bool = False, out_dir: Path = BUILD_DIR, timeout: int = 600
) -> dict:
    """Execute ``paths`` in order; write executed copies (or store in place) and the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        nb, seconds, error = execute(path, timeout=timeout)
        strip_volatile(nb)
        target = path if inplace and error is None else out_dir / path.name
        nbformat.write(nb, target)
        rows.append(
            {
                "notebook": path.name,
                "seconds": round(seconds, 1),
                "status": "ok" if error is None else f"FAILED: {error}",
            }
        )
    total = round(sum(r["seconds"] for r in rows), 1)
    report = {
        "notebooks": rows,
        "total_seconds": total,
        "failed": sum(r["status"] != "ok" for r in rows),
    }
    (out_dir / "course-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(report_table(rows, total))
    return report


def _check_notebook(path: Path) -> None:
    """One line for a file that is not a notebook, before any notebook runs."""
    try:
        nbformat.read(path, as_version=4)
    except Exception as err:  # JSON, schema or encoding errors: all say "not a notebook"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise LabkitError(
            f"{path.name} is not a notebook ({first}); accepted: .ipynb files saved by Jupyter"
        ) from None


def cli_main(argv: list[str]) -> int:
    from labkit.cli import Parser

    parser = Parser(prog="python -m labkit course", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook paths (default: every NN_*.ipynb)")
    parser.add_argument("--inplace", action="store_true", help="store outputs in the notebooks")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    parser.add_argument(
        "--exercises", action="store_true", help="run each notebook's exercise solutions after it"
    )
    args = parser.parse_args(argv)
    if args.exercises and args.inplace:
        raise LabkitError("--exercises and --inplace do not go together; use one of them")
    paths = [Path(p).resolve() for p in args.notebooks] or course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LabkitError(f"no such notebook: {', '.join(missing)}")
    if not paths:
        raise LabkitError(f"no NN_topic.ipynb notebooks in {NOTEBOOKS_DIR}")
    for p in paths:
        _check_notebook(p)
    if args.exercises:
        rows = [row for p in paths for row in run_exercises(p, timeout=args.timeout)]
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        out = BUILD_DIR / "exercises-report.json"
        out.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        width = max([len(r["notebook"]) + len(r["exercise"]) + 3 for r in rows] + [10])
        for r in rows:
            print(f"{r['notebook'] + ' · ' + r['exercise']:<{width}}  {r['status']}")
        failed = sum(r["status"] != "ok" for r in rows)
        print(f"{len(rows) - failed} of {len(rows)} solutions ran; report: {out}")
        return 1 if failed else 0
    report = run_course(paths, inplace=args.inplace, timeout=args.timeout)
    print(f"report: {BUILD_DIR / 'course-report.json'}", file=sys.stderr)
    return 1 if report["failed"] else 0
