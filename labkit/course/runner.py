"""Run the course: execute notebooks headless, time them, store outputs cleanly.

``python -m labkit course`` executes every ``notebooks/NN_*.ipynb`` in a fresh kernel, in order,
writes the executed copies and ``build/course-report.json`` and prints a table; it exits 1 if any
notebook failed. ``--inplace`` stores the outputs back into ``notebooks/`` with volatile metadata
stripped: that is how the committed notebooks are produced (``make notebooks``).

``--exercises`` checks the exercise solutions instead (``make exercises``): each notebook runs with
its defaults, then every ``python`` block inside a ``<details><summary>Solution</summary>`` of its
markdown runs after it in the same kernel, as a learner would paste it; the report lists each
solution's status. Nothing is stored in ``notebooks/``.

``--with-solutions DIR`` only writes copies of the notebooks with their solutions appended as
code cells (stored outputs kept): ``make test`` runs nbval on those copies, so CI checks every
notebook's outputs *and* every solution while running each notebook once.

A run of some notebooks updates their rows in ``build/course-report.json`` and keeps the others
(those of the course, and of the folders this run's notebooks are in). Every file is written
through a temporary file and an atomic rename (a full disk never leaves a cut notebook), the
output folder is checked for writing before any notebook runs, and Ctrl-C stops the whole run
(exit 130) keeping the rows of the notebooks that finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import nbformat

from labkit import REPO_ROOT, LabkitError, compat, files
from labkit.cli import Parser
from labkit.course import notebook_format

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BUILD_DIR = REPO_ROOT / "build"
NAME_RE = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
#: Cell metadata keys kept in committed notebooks; everything else (timings, ids of widgets,
#: collapsed state...) is volatile and stripped.
KEEP_CELL_METADATA = {"slideshow", "tags", "editable", "deletable"}
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Interrupted(Exception):
    """Ctrl-C stopped a run in ``notebook``; ``kept`` says what was written before it."""

    def __init__(self, notebook: str, kept: str):
        super().__init__(notebook)
        self.notebook, self.kept = notebook, kept


def course_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course's notebooks, ``NN_topic.ipynb``, in course order."""
    return sorted(p for p in folder.glob("*.ipynb") if NAME_RE.match(p.name))


def strip_volatile(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove metadata that changes from run to run (timings, kernel details, widget state), and
    join each run of consecutive stdout (or stderr) chunks into one: where the kernel flushed
    between a print's text and its newline is timing, not content."""
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        outputs = []
        for out in cell.get("outputs", []):
            if "metadata" in out:
                out.metadata = {}
            last = outputs[-1] if outputs else None
            if last and out.output_type == last.output_type == "stream" and out.name == last.name:
                # a figure or any other output in between keeps them apart
                last.text = "".join(last.text) + "".join(out.text)  # str, or a list of lines
            else:
                outputs.append(out)
        if "outputs" in cell:
            cell.outputs = outputs
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
        timeout=None if timeout == -1 else timeout,
        kernel_name="python3",
        # ipykernel 7 warns on every start that a local kernel talks over loopback TCP in plain
        # text; the kernel app's own log stays quiet below errors (cells' warnings still show)
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except KeyboardInterrupt:
        raise
    except CellExecutionError as err:
        lines = [ln for ln in ANSI_RE.sub("", str(err)).splitlines() if ln.strip()]
        error = lines[-1][:300] if lines else "cell failed"
    except Exception as err:  # kernel died, timeout...
        text = ANSI_RE.sub("", str(err))
        error = f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"
    if compat.nbclient_signalled(client):  # Ctrl-C: nbclient stopped the kernel and went on
        raise KeyboardInterrupt
    return nb, time.perf_counter() - start, error


def run_exercises(path: Path, timeout: int = 600) -> list[dict]:
    """Run a notebook, then each of its solutions in the same kernel; one row per solution.

    A failing solution does not stop the others (the kernel goes on, as in JupyterLab).
    """
    nb = nbformat.read(path, as_version=4)
    solutions = notebook_format.exercise_solutions(nb)
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


#: First line of every solution cell in a copy made by :func:`with_solutions` (nbval names the cell
#: by index only; this line says which exercise failed).
SOLUTION_MARK = "# SOLUTION (run by make test):"


def with_solutions(nb: nbformat.NotebookNode, name: str = "") -> nbformat.NotebookNode:
    """A copy of ``nb`` with each exercise solution appended as a code cell (outputs kept).

    The cells run after the whole notebook, in its kernel, as :func:`run_exercises` runs them.
    """
    out = nbformat.from_dict(json.loads(json.dumps(nb)))  # deep copy, plain nodes
    for title, code in notebook_format.exercise_solutions(nb):
        out.cells.append(nbformat.v4.new_code_cell(f"{SOLUTION_MARK} {name} {title}\n{code}"))
    return out


def write_solution_copies(paths: list[Path], out_dir: Path) -> list[Path]:
    """Write :func:`with_solutions` copies of ``paths`` into ``out_dir``; return their paths.

    The copies are plain notebooks in another folder: the kernel's working directory is
    ``out_dir``, so a notebook must find files through ``labkit.REPO_ROOT``, never ``../``
    (``tests/test_runner.py`` checks the committed notebooks for that).
    """
    files.writable_folder(out_dir)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        write_notebook(with_solutions(nb, name=path.name[:2]), target)
        written.append(target)
    return written


def write_notebook(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write ``nb`` to ``path`` through a temporary file and an atomic rename: a full disk or a
    kill leaves the old file whole, and fails in one line (:func:`labkit.files.replacing`)."""
    with files.replacing(path) as fh:
        nbformat.write(nb, fh)


def _report_rows(old: object) -> list[dict]:
    """The rows of an old report, if it is one (a list, a string or broken rows: none)."""
    rows = old.get("notebooks", []) if isinstance(old, dict) else []
    return [
        r
        for r in (rows if isinstance(rows, list) else [])
        if isinstance(r, dict)
        and isinstance(r.get("notebook"), str)
        and isinstance(r.get("seconds"), int | float)
        and isinstance(r.get("status"), str)
    ]


def merge_report(old: object, rows: list[dict], folder: Path | Iterable[Path]) -> dict:
    """The course report after a run of ``rows``: their entries replace the old ones, entries of
    notebooks not run this time are kept if the notebook still exists in ``folder`` (one folder,
    or several: the course's and those of this run's notebooks)."""
    folders = [folder] if isinstance(folder, Path) else list(folder)
    ran = {r["notebook"] for r in rows}
    kept = [
        r
        for r in _report_rows(old)
        if r["notebook"] not in ran and any((f / r["notebook"]).is_file() for f in folders)
    ]
    merged = sorted(kept + rows, key=lambda r: r["notebook"])
    return {
        "notebooks": merged,
        "total_seconds": round(sum(r["seconds"] for r in merged), 1),
        "failed": sum(r["status"] != "ok" for r in merged),
    }


def report_table(rows: list[dict], total: float) -> str:
    """The course report as a text table: notebook, seconds, status, and the total."""
    width = max([len(r["notebook"]) for r in rows] + [8])
    lines = [f"{'notebook':<{width}}  {'seconds':>8}  status"]
    lines += [f"{r['notebook']:<{width}}  {r['seconds']:>8.1f}  {r['status']}" for r in rows]
    lines.append(f"{'total':<{width}}  {total:>8.1f}")
    return "\n".join(lines)


def _run_one(path: Path, inplace: bool, out_dir: Path, timeout: int) -> dict:
    """Execute one notebook, write its executed copy (or store it in place) and return its row;
    ``KeyboardInterrupt`` when Ctrl-C was pressed during it (nothing written then)."""
    print(f"running {path.name} ...", flush=True)
    nb, seconds, error = execute(path, timeout=timeout)
    strip_volatile(nb)
    write_notebook(nb, path if inplace and error is None else out_dir / path.name)
    status = "ok" if error is None else f"FAILED: {error}"
    day = datetime.date.today().isoformat()  # the README's map says when its times were taken
    return {"notebook": path.name, "seconds": round(seconds, 1), "status": status, "date": day}


def _write_report(out_dir: Path, rows: list[dict], folders: set[Path]) -> dict:
    report_path = out_dir / "course-report.json"
    try:
        old = json.loads(report_path.read_text()) if report_path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        old = None  # a broken report is rebuilt from this run (and the notebooks' own rows)
    report = merge_report(old, rows, folders)
    files.replace_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def run_course(
    paths: list[Path], inplace: bool = False, out_dir: Path = BUILD_DIR, timeout: int = 600
) -> dict:
    """Execute ``paths`` in order; write executed copies (or store in place) and the report.

    The folders written to are checked first (one line, before any notebook runs). Ctrl-C
    stops the run: the report keeps the notebooks that finished, and :class:`Interrupted` says
    where it stopped.
    """
    files.writable_folder(out_dir)
    if inplace:
        for folder in {p.parent for p in paths}:
            files.writable_folder(folder)
    folders = {NOTEBOOKS_DIR, *(p.parent for p in paths)}
    rows: list[dict] = []
    for path in paths:
        try:
            rows.append(_run_one(path, inplace, out_dir, timeout))
        except KeyboardInterrupt:
            _write_report(out_dir, rows, folders)
            kept = f"the report keeps the {len(rows)} notebook(s) that finished"
            raise Interrupted(path.name, kept) from None
    report = _write_report(out_dir, rows, folders)
    print(report_table(rows, round(sum(r["seconds"] for r in rows), 1)))
    if len(report["notebooks"]) > len(rows):
        print(f"(report: {len(rows)} notebook(s) updated, {len(report['notebooks'])} in total)")
    return report


def _timeout(text: str) -> int:
    """``--timeout``: seconds per cell (>= 1), or -1 for no limit (0 is refused, not "none")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(
            f"expected seconds per cell >= 1, or -1 for no limit, got {text!r}"
        )
    return value


def _run_exercises(paths: list[Path], timeout: int) -> int:
    """``--exercises``: every notebook then its solutions; writes build/exercises-report.json."""
    files.writable_folder(BUILD_DIR)
    rows = []
    for p in paths:
        try:
            rows += run_exercises(p, timeout=timeout)
        except KeyboardInterrupt:
            raise Interrupted(p.name, "no exercises report was written") from None
    out = BUILD_DIR / "exercises-report.json"
    files.replace_text(out, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    width = max([len(r["notebook"]) + len(r["exercise"]) + 3 for r in rows] + [10])
    for r in rows:
        print(f"{r['notebook'] + ' · ' + r['exercise']:<{width}}  {r['status']}")
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} solutions ran; report: {out}")
    return 1 if failed else 0


def cli_main(argv: list[str]) -> int:
    parser = Parser(prog="python -m labkit course", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook paths (default: every NN_*.ipynb)")
    parser.add_argument("--inplace", action="store_true", help="store outputs in the notebooks")
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=600,
        help="seconds per cell (default 600; -1: no limit)",
    )
    parser.add_argument(
        "--exercises", action="store_true", help="run each notebook's exercise solutions after it"
    )
    parser.add_argument(
        "--with-solutions",
        metavar="DIR",
        type=Path,
        help="only write copies with the solutions appended as code cells into DIR (make test)",
    )
    args = parser.parse_args(argv)
    chosen = [f for f in ("exercises", "inplace", "with_solutions") if getattr(args, f)]
    if len(chosen) > 1:
        flags = " and ".join("--" + f.replace("_", "-") for f in chosen)
        raise LabkitError(f"{flags} do not go together; use one of them")
    paths = [Path(p).resolve() for p in args.notebooks] or course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LabkitError(f"no such notebook: {', '.join(missing)}")
    if not paths:
        raise LabkitError(f"no NN_topic.ipynb notebooks in {NOTEBOOKS_DIR}")
    for p in paths:
        notebook_format.read(p)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # nbclient's orphan tasks on Ctrl-C
    try:
        return _run(args, paths)
    except Interrupted as stop:
        print(
            f"labkit course: interrupted (Ctrl-C) in {stop.notebook}; {stop.kept}; run the same "
            "command again to redo it",
            file=sys.stderr,
        )
        return 130


def _run(args: argparse.Namespace, paths: list[Path]) -> int:
    if args.with_solutions:
        written = write_solution_copies(paths, args.with_solutions)
        n = sum(
            len(notebook_format.exercise_solutions(nbformat.read(p, as_version=4))) for p in paths
        )
        print(
            f"{len(written)} notebooks with {n} solutions appended written to {args.with_solutions}"
        )
        return 0
    if args.exercises:
        return _run_exercises(paths, args.timeout)
    report = run_course(paths, inplace=args.inplace, out_dir=BUILD_DIR, timeout=args.timeout)
    print(f"report: {BUILD_DIR / 'course-report.json'}", file=sys.stderr)
    return 1 if report["failed"] else 0
