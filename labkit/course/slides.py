"""Slides for workshops: slide structure in the notebooks, speaker notes, offline reveal.js decks.

``python -m labkit slides`` builds one reveal.js deck per notebook into ``build/slides/``; every
script, style and font is a local file (reveal.js is vendored in ``labkit/assets/reveal.js``), so a
deck renders in a room with no network. ``--structure`` rewrites the slide metadata of the
notebooks (idempotent: a second run changes nothing):

- the parameters cell and the setup code before the first ``##`` section are ``skip``;
- a markdown cell is split before each ``##`` / ``###`` heading and before each solution, so
  exercises, solutions and the summary each get their own slide (``##`` starts a slide, ``###``
  and a solution a sub-slide);
- a code cell whose stored output is long gets the tag ``slides-long-output``, and a cell that
  would take a slide past a 1280x720 screen starts a sub-slide (:mod:`labkit.course.slide_fit`);
- each ``##`` section gets a speaker ``notes`` cell (tag ``speaker-notes``) with its minutes and
  what to say or skip, computed from the section itself and the notebook's measured CPU time.

``--times build/course-report.json`` also writes the measured seconds into each notebook's header
and the README's course map, so the three agree (``tests/test_slides.py`` compares them).

Every file is replaced through a temporary file and an atomic rename; a broken notebook, a
report that is not a course report, a negative time, or an output folder that cannot be written
is one line before anything is written.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from labkit import REPO_ROOT, LabkitError, files
from labkit.cli import Parser
from labkit.course import notebook_format
from labkit.course.slide_fit import (
    LONG_TAG,
    first_sentence,
    fit_slides,
    is_long_output,
    output_size,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SLIDES_DIR = REPO_ROOT / "build" / "slides"
README = REPO_ROOT / "README.md"
PRESENTING = REPO_ROOT / "docs" / "presenting.md"
NOTES_TAG = "speaker-notes"
#: Minutes a learner group needs per exercise tier, and for the title and summary slides.
TIER_MINUTES = {"⭐": 5, "⭐⭐": 10, "⭐⭐⭐": 15}
TITLE_MINUTES = 2
SUMMARY_MINUTES = 2
#: Talk time: minutes per 100 words of narrative, per code cell shown, per figure.
WORDS_PER_MINUTE = 110
MINUTES_PER_CODE_CELL = 0.75
MINUTES_PER_FIGURE = 0.5

TIME_RE = re.compile(r"~(\d+) s on a 2-core CPU")
MAP_ROW_RE = re.compile(r"^\| \[(\d\d)\]\([^)]*\) \|[^|\n]*\|[^|\n]*\| (\d+) s \|", re.M)
#: the date in the course map's intro ("one notebook at a time (2026-11-28; ...")
MAP_DATE_RE = re.compile(r"(one notebook at a time\s+\()\d{4}-\d\d-\d\d(;)")
DATE_RE = re.compile(r"\d{4}-\d\d-\d\d")


# ----------------------------------------------------------------------------- structure


def _has_figure(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _level(cell) -> int | None:
    """The level of the heading a markdown cell starts with (None: no heading)."""
    if cell.cell_type != "markdown":
        return None
    found = notebook_format.first_heading(cell.source)
    return found[0] if found else None


def _slide_type(cell, index: int, first_section: int) -> str:
    src = cell.source.lstrip()
    if index == 0:
        return "slide"
    if "parameters" in cell.metadata.get("tags", []):
        return "skip"
    if cell.cell_type == "code" and index < first_section:
        return "skip"  # imports and hardware.setup(): run, not presented
    if cell.cell_type == "markdown":
        level = _level(cell)
        if level == 2:
            return "slide"
        if level == 3 or src.startswith(notebook_format.SOLUTION_START):
            return "subslide"
        if src.startswith("**Check:**"):
            return "fragment"
        return "-"
    if src.startswith("# CHECK") or _has_figure(cell):
        return "fragment"
    return "-"


@dataclass
class Section:
    """One ``##`` section of a notebook, as the plan and the speaker notes see it."""

    heading: str
    words: int = 0
    code_cells: int = 0
    figures: int = 0
    cuda: bool = False
    first_sentence: str = ""
    check: str = ""
    tiers: list[str] = field(default_factory=list)
    minutes: int = 0

    @property
    def kind(self) -> str:
        low = self.heading.lower()
        if low.startswith("exercises"):
            return "exercises"
        if low.startswith("summary"):
            return "summary"
        if re.match(r"(\d+\.\s*)?optional\b", low):
            return "optional"  # self-study: timed, but not part of a workshop path
        return "lesson"


def _plain(markdown: str) -> str:
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"<details>.*?</details>", " ", text, flags=re.S)
    text = re.sub(r"^#+ .*$", " ", text, flags=re.M)
    text = re.sub(r"^\s*\|.*$", " ", text, flags=re.M)  # tables
    text = re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", text, flags=re.M)  # list markers
    text = re.sub(r"[*|]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def sections(nb: nbformat.NotebookNode) -> list[Section]:
    """The notebook's ``##`` sections with what their slides hold (speaker notes excluded)."""
    found: list[Section] = []
    for cell in nb.cells:
        if NOTES_TAG in cell.metadata.get("tags", []):
            continue
        src = cell.source
        if _level(cell) == 2:
            found.append(Section(heading=notebook_format.first_heading(src)[1]))
        if not found:
            continue
        sec = found[-1]
        if cell.cell_type == "markdown":
            plain = _plain(src)
            sec.words += len(plain.split())
            tiers = map(notebook_format.tier, notebook_format.headings(src, level=3))
            sec.tiers += ["⭐" * t for t in tiers if t]
            if src.lstrip().startswith("**Check:**") and not sec.check:
                sec.check = first_sentence(plain.removeprefix("Check:").strip())
            elif plain and not sec.first_sentence and not src.lstrip().startswith("**Check"):
                sec.first_sentence = first_sentence(plain)
        elif src.strip():
            sec.code_cells += 1
            sec.figures += _has_figure(cell)
            sec.cuda = sec.cuda or "requires_cuda" in src
    return found


def cpu_seconds(name: str, readme: Path = README) -> float | None:
    """The notebook's CPU time in the README's course map (``NN`` -> seconds), if listed."""
    if not readme.is_file():
        return None
    for m in MAP_ROW_RE.finditer(readme.read_text()):
        if m.group(1) == name[:2]:
            return float(m.group(2))
    return None


def header_seconds(nb: nbformat.NotebookNode) -> float | None:
    """The "~N s on a 2-core CPU" of the notebook's title cell."""
    m = TIME_RE.search(nb.cells[0].source) if nb.cells else None
    return float(m.group(1)) if m else None


def plan(nb: nbformat.NotebookNode, run_seconds: float | None) -> list[Section]:
    """Sections with presentation minutes: talk time from their size plus their share of the
    notebook's measured run time; exercises by tier (TIER_MINUTES)."""
    secs = sections(nb)
    total_code = sum(s.code_cells for s in secs) or 1
    run = run_seconds if run_seconds is not None else (header_seconds(nb) or 60.0)
    for s in secs:
        if s.kind == "exercises":
            s.minutes = sum(TIER_MINUTES.get(t, 10) for t in s.tiers) or 10
        elif s.kind == "summary":
            s.minutes = SUMMARY_MINUTES
        else:
            talk = (
                s.words / WORDS_PER_MINUTE
                + MINUTES_PER_CODE_CELL * s.code_cells
                + MINUTES_PER_FIGURE * s.figures
            )
            s.minutes = max(2, math.ceil(talk + run * s.code_cells / total_code / 60))
    return secs


def notes_text(sec: Section, notebook: str) -> str:
    """The speaker notes of one section (markdown)."""
    if sec.kind == "exercises":
        tiers = ", ".join(f"{t} {TIER_MINUTES.get(t, 10)} min" for t in sec.tiers)
        return (
            f"**Speaker notes · exercises · ~{sec.minutes} min** ({tiers}).\n\n"
            "- Everyone does ⭐; pairs who finish go on to ⭐⭐, the fast ones to ⭐⭐⭐.\n"
            f"- {_selfcheck_line(notebook[:2])}\n"
            "- Solutions are collapsed under each task; `make test` runs every one of them, so "
            "they work.\n"
            "- In a 3-hour slot: ⭐ only, 5 minutes, then show its solution."
        )
    if sec.kind == "summary":
        return (
            f"**Speaker notes · summary · ~{sec.minutes} min.** Read the bullets back as the "
            "questions they answer; point at *Where next*."
        )
    what = "talk, run the cells, show the check" if sec.check else "talk, run the cells"
    lines = [f"**Speaker notes · ~{sec.minutes} min** ({what})."]
    if sec.first_sentence:
        lines.append(f"- Say: {sec.first_sentence}")
    if sec.figures:
        lines.append("- Show the figure: read its title and axes before its message.")
    if sec.check:
        lines.append(f"- The check proves: {sec.check}")
    if sec.cuda:
        lines.append(
            "- On a CPU-only room its CUDA cell prints why it skipped: say in one sentence what "
            "it measures on a GPU."
        )
    if sec.kind == "optional":
        lines.append("- Optional: self-study; in a workshop, skip it (the paths leave it out).")
    elif sec.minutes >= 6:
        lines.append("- Short on time: run it, show the check's line, move on.")
    return "\n".join(lines)


def _selfcheck_line(nn: str) -> str:
    from labkit.course.exercises import EXERCISES

    keys = sorted(k for k in EXERCISES if k.startswith(f"{nn}."))
    if not keys:
        return "No self-checks here: compare with the collapsed solution."
    calls = ", ".join(f'`check("{k}", answer)`' for k in keys)
    return f"Self-checks: {calls} say right or wrong with a hint, never the answer."


def _notes_cell(text: str, number: int) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(text)
    cell["id"] = f"speaker-notes-{number}"
    cell.metadata = {"slideshow": {"slide_type": "notes"}, "tags": [NOTES_TAG]}
    return cell


def structure(nb: nbformat.NotebookNode, name: str, run_seconds: float | None = None):
    """Give ``nb`` the course's slide structure, in place (idempotent); returns ``nb``."""
    cells = []
    for cell in nb.cells:
        if NOTES_TAG in cell.metadata.get("tags", []):
            continue  # regenerated below
        if cell.cell_type == "markdown":
            pieces = notebook_format.split(cell.source)
            for k, piece in enumerate(pieces):
                new = nbformat.v4.new_markdown_cell(piece)
                new.metadata = dict(cell.metadata) if k == 0 else {}
                if "id" in cell:  # stable ids: a second run changes nothing
                    new["id"] = cell["id"] if k == 0 else f"{cell['id'][:56]}-{k}"
                cells.append(new)
        else:
            cells.append(cell)
    first_section = next(
        (i for i, c in enumerate(cells) if _level(c) == 2),
        len(cells),
    )
    for i, cell in enumerate(cells):
        cell.metadata.setdefault("slideshow", {})["slide_type"] = _slide_type(
            cell, i, first_section
        )
        tags = [t for t in cell.metadata.get("tags", []) if t != LONG_TAG]
        if is_long_output(cell):
            tags.append(LONG_TAG)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    fit_slides(cells)
    nb.cells = cells
    secs = iter(plan(nb, run_seconds))
    out = []
    for cell in nb.cells:
        out.append(cell)
        if _level(cell) == 2:
            out.append(_notes_cell(notes_text(next(secs), name), len(out)))
    nb.cells = out
    return nb


# ----------------------------------------------------------------------------- times


def set_times(nb: nbformat.NotebookNode, seconds: float) -> bool:
    """Write ``seconds`` (rounded to 1 s, as the README's map) into the header's "~N s on a 2-core
    CPU"; True if changed."""
    if not nb.cells or not TIME_RE.search(nb.cells[0].source):
        return False
    new = TIME_RE.sub(f"~{max(1, round(seconds))} s on a 2-core CPU", nb.cells[0].source, 1)
    changed = new != nb.cells[0].source
    nb.cells[0].source = new
    return changed


REPORT_ACCEPTED = "accepted: the build/course-report.json that `python -m labkit course` writes"


def read_report(report: Path) -> list[dict]:
    """The ``ok`` rows of a course report (each names its notebook and its seconds, >= 0); one
    line for a file that is not a course report or a time that is not a number of seconds >= 0."""
    if not report.is_file():
        raise LabkitError(f"no course report at {report}; run `make course` first")
    data = files.read_json(report, REPORT_ACCEPTED, name=str(report))
    rows = data.get("notebooks") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise LabkitError(f"{report} holds no list of notebooks; {REPORT_ACCEPTED}")
    ok = []
    for k, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("notebook"), str):
            raise LabkitError(f"{report}: row {k} names no notebook; {REPORT_ACCEPTED}")
        if row.get("status") != "ok":
            continue
        sec = row.get("seconds")
        if isinstance(sec, bool) or not isinstance(sec, int | float) or not 0 <= sec < math.inf:
            raise LabkitError(
                f"{report}: {row['notebook']} has seconds {sec!r}; accepted: a number of "
                "seconds >= 0"
            )
        ok.append(row)
    return ok


def newest_date(rows: list[dict], names: Iterable[str]) -> str | None:
    """The newest ``date`` (YYYY-MM-DD) among the :func:`read_report` rows of ``names``; None
    where no such row has one (reports written before rows carried it)."""
    wanted = set(names)
    days = [
        r["date"]
        for r in rows
        if r["notebook"] in wanted
        and isinstance(r.get("date"), str)
        and DATE_RE.fullmatch(r["date"])
    ]
    return max(days, default=None)


def set_readme_times(readme_text: str, seconds: dict[str, float], day: str | None = None) -> str:
    """The README with the course map's CPU time of each ``NN`` in ``seconds`` replaced, and the
    map's "one notebook at a time (YYYY-MM-DD;" set to ``day`` when given."""
    if day is not None:
        readme_text = MAP_DATE_RE.sub(rf"\g<1>{day}\g<2>", readme_text, count=1)

    def repl(m: re.Match) -> str:
        nn = m.group(1)
        if nn not in seconds:
            return m.group(0)
        head = m.group(0)[: m.start(2) - m.start(0)]
        return f"{head}{round(seconds[nn])} s |"

    return MAP_ROW_RE.sub(repl, readme_text)


# ----------------------------------------------------------------------------- the guide's plan


#: The two paths of docs/presenting.md: notebooks taught in each, with their ⭐ exercise (a
#: notebook that does not exist yet is left out). Breaks are not included; the limits are checked
#: by tests/test_slides.py (3-hour path <= 165 min, full day <= 420 min).
THREE_HOUR_PATH = ("01", "02", "06", "11")
FULL_DAY_PATH = ("01", "02", "04", "05", "06", "11", "13", "14", "18")
PLAN_START, PLAN_END = "<!-- plan:start -->", "<!-- plan:end -->"


def plan_table(paths: list[Path], readme: Path = README) -> str:
    """The markdown block of docs/presenting.md between the plan markers (generated)."""
    rows = [
        "| notebook | minutes per section (§ number or part) | lesson | ⭐ / all exercises "
        "| 3-hour path | full day |",
        "|---|---|---|---|---|---|",
    ]
    three = day = everything = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        secs = plan(nb, cpu_seconds(path.name, readme))
        lesson = TITLE_MINUTES + sum(s.minutes for s in secs if s.kind in ("lesson", "summary"))
        optional = sum(s.minutes for s in secs if s.kind == "optional")
        ex_all = sum(s.minutes for s in secs if s.kind == "exercises")
        ex_one = TIER_MINUTES["⭐"] if ex_all else 0
        parts = " · ".join(
            f"§{s.heading.split('.')[0]} {s.minutes}"
            if s.kind == "lesson"
            else f"§{s.heading.split('.')[0]} optional {s.minutes}"
            if s.kind == "optional"
            else f"{s.kind} {s.minutes}"
            for s in secs
            if s.kind != "exercises"
        )
        nn = path.name[:2]
        t = lesson + ex_one if nn in THREE_HOUR_PATH else 0
        d = lesson + ex_one if nn in FULL_DAY_PATH else 0
        three, day, everything = three + t, day + d, everything + lesson + optional + ex_all
        rows.append(
            f"| {nn} | {parts} | {lesson} | {ex_one} / {ex_all} | {t or '—'} | {d or '—'} |"
        )
    rows.append(f"| **total** (all: {everything} min) | | | | **{three}** | **{day}** |")
    return "\n".join([PLAN_START, *rows, PLAN_END])


def update_plan(guide: Path, paths: list[Path], readme: Path = README) -> bool:
    """Replace the plan block of the presenter's guide; True if it changed."""
    text = guide.read_text()
    if PLAN_START not in text or PLAN_END not in text:
        raise LabkitError(f"{guide.name} has no {PLAN_START} ... {PLAN_END} block to update")
    head, rest = text.split(PLAN_START, 1)
    tail = rest.split(PLAN_END, 1)[1]
    new = head + plan_table(paths, readme) + tail
    if new != text:
        files.replace_text(guide, new)
    return new != text


# ----------------------------------------------------------------------------- decks

REMOTE_RE = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//"
    r"|@import\s+(?:url\()?\s*[\"']?(?:https?:)?//"
    r"|url\(\s*[\"']?(?:https?:)?//"
    r"|\bimport\b[^;\n]*from\s*[\"'](?:https?:)?//",
    re.I,
)


def remote_references(html: str) -> list[str]:
    """Each place where ``html`` (or CSS) would load a script, style, font or image from the
    network: ``<script src>``, ``<link href>``, ``@import``, ``url(...)``, ES module imports."""
    return [html[m.start() : m.start() + 120] for m in REMOTE_RE.finditer(html)]


def _deck_preprocess(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What the deck shows of each cell: no warnings (stderr), long outputs replaced by a line."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if LONG_TAG in cell.metadata.get("tags", []):
            lines, rows = output_size(cell)
            size = f"{rows} table rows" if rows > lines else f"{lines} lines"
            cell.outputs = [
                nbformat.v4.new_output(
                    "stream", text=f"[output kept off the slide ({size}): see the notebook]\n"
                )
            ]
        else:
            cell.outputs = [
                o
                for o in cell.outputs
                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
    return nb


def build_decks(paths: list[Path], out_dir: Path = SLIDES_DIR) -> list[Path]:
    """One offline reveal.js deck per notebook in ``out_dir`` (with ``out_dir/reveal.js/``)."""
    from nbconvert import SlidesExporter

    files.writable_folder(out_dir)
    notebooks = [notebook_format.read(p) for p in paths]
    try:
        shutil.copytree(ASSETS / "reveal.js", out_dir / "reveal.js", dirs_exist_ok=True)
    except shutil.Error as err:  # a list of (source, target, why), one per file that failed
        failed = err.args[0] if err.args and isinstance(err.args[0], list) else [("", "", err)]
        raise LabkitError(
            f"cannot copy reveal.js into {files.shown(out_dir)} ({failed[0][-1]}); accepted: a "
            "writable folder with free space"
        ) from None
    except OSError as err:
        raise files.write_error(out_dir / "reveal.js", err, kept=False) from None
    exporter = SlidesExporter(
        extra_template_paths=[str(ASSETS / "slides")],
        template_file="offline_reveal.html.j2",
        reveal_url_prefix="reveal.js",
        reveal_theme="white",
        reveal_transition="none",
    )
    written = []
    for path, nb in zip(paths, notebooks, strict=True):
        body, _ = exporter.from_notebook_node(
            _deck_preprocess(nb), resources={"metadata": {"name": path.stem}}
        )
        remote = remote_references(body)
        if remote:
            raise LabkitError(f"{path.name}: the deck would load from the network: {remote[0]!r}")
        target = out_dir / f"{path.stem}.slides.html"
        files.replace_text(target, body)
        written.append(target)
    return written


# ----------------------------------------------------------------------------- command line


def cli_main(argv: list[str]) -> int:
    from labkit.course.runner import course_notebooks

    parser = Parser(prog="python -m labkit slides", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook paths (default: every NN_*.ipynb)")
    parser.add_argument(
        "--structure",
        action="store_true",
        help="rewrite slide metadata and speaker notes in the notebooks (idempotent) and the "
        "plan in docs/presenting.md; builds no deck",
    )
    parser.add_argument(
        "--times",
        metavar="REPORT",
        type=Path,
        help="with --structure: copy measured seconds from a course report "
        "(build/course-report.json) into the headers and the README's course map",
    )
    parser.add_argument("--out", type=Path, default=SLIDES_DIR, help="deck folder (build/slides)")
    args = parser.parse_args(argv)
    paths = [Path(p).resolve() for p in args.notebooks] or course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LabkitError(f"no such notebook: {', '.join(missing)}")
    if args.times and not args.structure:
        raise LabkitError("--times goes with --structure")
    if not args.structure:
        decks = build_decks(paths, args.out)
        print(f"{len(decks)} offline decks in {args.out} (open one in a browser; S: speaker view)")
        return 0
    notebooks = [notebook_format.read(p) for p in paths]  # every one readable before any write
    rows = read_report(args.times) if args.times else []
    measured = {r["notebook"]: float(r["seconds"]) for r in rows}
    if measured:
        course = {p.name for p in course_notebooks()}  # the README maps the course only
        on_map = {name[:2]: sec for name, sec in measured.items() if name in course}
        day = newest_date(rows, (n for n in measured if n in course))
        files.replace_text(README, set_readme_times(README.read_text(), on_map, day))
    changed = 0
    for path, nb in zip(paths, notebooks, strict=True):
        before = nbformat.writes(nb)
        if path.name in measured:
            set_times(nb, measured[path.name])
        structure(nb, path.name, cpu_seconds(path.name))
        if nbformat.writes(nb) != before:
            with files.replacing(path) as fh:
                nbformat.write(nb, fh)
            changed += 1
    if PRESENTING.is_file():
        update_plan(PRESENTING, course_notebooks())
    print(f"slide structure: {changed} of {len(paths)} notebooks changed")
    return 0
