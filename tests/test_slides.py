"""Slides: offline decks (no remote script/style/font), slide structure, speaker notes, times."""

import hashlib
import json
import re

import nbformat
import pytest

from labkit import LabkitError
from labkit.course import notebook_format, runner, slide_fit, slides

NOTEBOOKS = runner.course_notebooks()
IDS = [p.name for p in NOTEBOOKS]
README_TEXT = slides.README.read_text()


def test_remote_references_finds_every_way_a_page_loads_from_the_network():
    remote = [
        '<script src="https://unpkg.com/reveal.js@4.0.2/dist/reveal.js"></script>',
        "<link rel='stylesheet' href='//cdn.example/x.css'>",
        "<style>@import url(https://fonts.googleapis.com/css?family=Lato);</style>",
        '<style>@font-face { src: url("http://x/f.woff") }</style>',
        "<script type=module>import mermaid from 'https://cdn/mermaid.mjs';</script>",
        '<img src="https://x/y.png">',
    ]
    for html in remote:
        assert slides.remote_references(html), html
    local = (
        '<script src="reveal.js/dist/reveal.js"></script><link href="reveal.js/dist/reveal.css">'
        '<a href="https://revealjs.com">a link is not a load</a>'
        "/* https://github.com/x in a comment */ url(./fonts/a.woff)"
    )
    assert slides.remote_references(local) == []


def test_vendored_reveal_is_what_its_source_file_says_and_loads_nothing_remote():
    root = slides.ASSETS / "reveal.js"
    lines = (root / "SOURCE.txt").read_text().splitlines()[1:]
    for line in lines:
        digest, name = line.split("  ", 1)
        data = (root / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        if name.endswith(".css"):
            assert slides.remote_references(data.decode()) == [], name
    assert {"dist/reveal.js", "dist/theme/white.css", "plugin/notes/notes.js"} <= {
        ln.split("  ", 1)[1] for ln in lines
    }


def test_every_deck_is_offline(tmp_path):
    """Build every notebook's deck: each loads only local files, which exist."""
    decks = slides.build_decks(NOTEBOOKS, tmp_path)
    assert len(decks) == len(NOTEBOOKS)
    for deck in decks:
        html = deck.read_text()
        assert slides.remote_references(html) == [], deck.name
        assert '<script src="reveal.js/dist/reveal.js">' in html
        for ref in ("reveal.js/dist/reveal.css", "reveal.js/dist/theme/white.css"):
            assert ref in html and (tmp_path / ref).is_file()
        assert 'class="notes"' in html, f"{deck.name}: no speaker notes"
        assert "MathJax.js" not in html and "require.js" not in html


def _md(source, **meta):
    cell = nbformat.v4.new_markdown_cell(source)
    cell.metadata.update(meta)
    return cell


def _code(source, text="", **meta):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata.update(meta)
    if text:
        cell.outputs = [nbformat.v4.new_output("stream", text=text)]
    return cell


EXERCISES_AND_SUMMARY = """## Exercises

### ⭐ Warm-up
Count.
<details><summary>Solution</summary>

```python
## not a heading: inside a fence
print(1)
```
### not a heading either: inside details
</details>

### ⭐⭐ Practice
More.

## Summary
- done"""


def _toy():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _md("# 99 · Toy\n\nTime: ~40 s on a 2-core CPU."),
        _code("FAST = True", tags=["parameters"]),
        _code("import torch", text="a warning\n"),
        _md("## 1. First\n\nWe measure one thing. Then another."),
        _code("print(1)", text="1\n"),
        _code("for i in range(40): print(i)", text="".join(f"{i}\n" for i in range(40))),
        _md("**Check:** it is one."),
        _code("# CHECK\nassert 1 == 1"),
        _md(EXERCISES_AND_SUMMARY),
    ]
    return nb


def test_structure_splits_skips_tags_and_adds_notes():
    nb = slides.structure(_toy(), "99_toy.ipynb", run_seconds=40)
    kinds = [
        (c.source.split("\n")[0][:24], c.metadata["slideshow"]["slide_type"]) for c in nb.cells
    ]
    assert kinds[:3] == [("# 99 · Toy", "slide"), ("FAST = True", "skip"), ("import torch", "skip")]
    md = [(s, k) for s, k in kinds if not s.startswith("**Speaker")]
    assert ("## Exercises", "slide") in md and ("## Summary", "slide") in md
    assert ("### ⭐ Warm-up", "subslide") in md and ("### ⭐⭐ Practice", "subslide") in md
    assert ("<details><summary>Soluti", "subslide") in md
    solution = next(c for c in nb.cells if c.source.startswith("<details>"))
    assert "## not a heading" in solution.source and "### not a heading" in solution.source
    notes = [c for c in nb.cells if slides.NOTES_TAG in c.metadata.get("tags", [])]
    assert len(notes) == 3 and all(c.metadata["slideshow"]["slide_type"] == "notes" for c in notes)
    assert (
        "~" in notes[0].source
        and "min" in notes[0].source
        and "We measure one thing." in notes[0].source
    )
    assert "⭐ 5 min, ⭐⭐ 10 min" in notes[1].source
    long = [c for c in nb.cells if slides.LONG_TAG in c.metadata.get("tags", [])]
    assert [c.source[:3] for c in long] == ["for"]
    assert next(c for c in nb.cells if c.source.startswith("# CHECK")).metadata["slideshow"] == {
        "slide_type": "fragment"
    }


def test_tall_sections_are_split_into_subslides_that_fit():
    """A section of many cells becomes several sub-slides, each within SLIDE_PX by the estimate
    (the deck template caps a long code cell or figure; browser_check measures the real decks)."""
    nb = nbformat.v4.new_notebook()
    block = "\n".join(f"x{i} = {i}" for i in range(12))
    nb.cells = [_md("# 99 · Toy"), _md("## 1. Long\n\nOne sentence.")]
    nb.cells += [_code(block, text="".join(f"{i}\n" for i in range(6))) for _ in range(6)]
    nb = slides.structure(nb, "99_toy.ipynb", run_seconds=40)
    shown = [c for c in nb.cells if c.metadata["slideshow"]["slide_type"] not in ("skip", "notes")]
    slide_px, starts = [], ("slide", "subslide")
    for cell in shown:
        if cell.metadata["slideshow"]["slide_type"] in starts:
            slide_px.append(0)
        slide_px[-1] += slide_fit.cell_height(cell)
    assert len(slide_px) > 3 and max(slide_px) <= slide_fit.SLIDE_PX
    assert slide_fit.cell_height(_code("x = 1\n" * 200)) <= slide_fit.CODE_MAX_PX + 40


def test_structure_is_idempotent_and_keeps_the_exercises_runnable():
    once = slides.structure(_toy(), "99_toy.ipynb", run_seconds=40)
    text = nbformat.writes(once)
    twice = slides.structure(nbformat.reads(text, as_version=4), "99_toy.ipynb", run_seconds=40)
    assert nbformat.writes(twice) == text
    assert [t for t, _ in notebook_format.exercise_solutions(once)] == ["⭐ Warm-up"]


def test_plan_minutes_grow_with_content_and_run_time():
    nb = _toy()
    short, long_run = slides.plan(nb, 10)[0], slides.plan(nb, 600)[0]
    assert short.kind == "lesson" and 2 <= short.minutes < long_run.minutes
    ex = slides.plan(nb, 10)[1]
    assert ex.kind == "exercises" and ex.minutes == 15


def test_optional_sections_are_timed_but_left_out_of_the_paths(tmp_path):
    nb = _toy()
    nb.cells.insert(
        -1, _md("## 2. Optional: more\n\nFor self-study. " + "Words to read here. " * 60)
    )
    secs = slides.plan(nb, None)  # the header's 40 s, as plan_table without a README
    assert [s.kind for s in secs][:2] == ["lesson", "optional"] and secs[1].minutes >= 2
    path = tmp_path / "01_toy.ipynb"  # 01 is on both paths
    nbformat.write(nb, path)
    row = slides.plan_table([path], readme=tmp_path / "none.md").splitlines()[3]
    lesson = slides.TITLE_MINUTES + sum(s.minutes for s in secs if s.kind in ("lesson", "summary"))
    assert f"§2 optional {secs[1].minutes}" in row
    assert row.endswith(f"| {lesson} | 5 / 15 | {lesson + 5} | {lesson + 5} |"), row
    notes = slides.notes_text(secs[1], "01_toy.ipynb")
    assert "Optional: self-study" in notes and "Short on time" not in notes


def test_deck_drops_warnings_and_replaces_long_outputs():
    nb = slides.structure(_toy(), "99_toy.ipynb", run_seconds=40)
    k = next(i for i, c in enumerate(nb.cells) if c.source == "print(1)")
    nb.cells[k].outputs.append(nbformat.v4.new_output("stream", name="stderr", text="Warn\n"))
    deck = slides._deck_preprocess(nb)
    assert [o["text"] for o in deck.cells[k].outputs] == ["1\n"]
    long = next(c for c in deck.cells if c.source.startswith("for"))
    assert long.outputs[0]["text"].startswith("[output kept off the slide (40 lines)")
    assert len(nb.cells[k].outputs) == 2  # the notebook itself is untouched


def test_times_are_written_into_header_and_readme():
    nb = _toy()
    assert slides.set_times(nb, 52.4) and "~52 s on a 2-core CPU" in nb.cells[0].source
    readme = "| [07](notebooks/07_x.ipynb) | topic | what | 26 s | no |\n"
    assert slides.set_readme_times(readme, {"07": 31.6}) == readme.replace("26 s", "32 s")


def test_readme_map_date_is_the_newest_run_of_the_notebooks_on_it(tmp_path):
    report = tmp_path / "course-report.json"
    rows = [
        {"notebook": "07_x.ipynb", "seconds": 31.6, "status": "ok", "date": "2026-12-01"},
        {"notebook": "08_y.ipynb", "seconds": 9.0, "status": "ok", "date": "2026-12-07"},
        {"notebook": "09_z.ipynb", "seconds": 9.0, "status": "FAILED: x", "date": "2026-12-09"},
        {"notebook": "10_old.ipynb", "seconds": 9.0, "status": "ok"},  # before rows had a date
    ]
    report.write_text(json.dumps({"notebooks": rows}))
    rows = slides.read_report(report)  # its ok rows: 09's failed run is not among them
    assert [r["notebook"] for r in rows] == ["07_x.ipynb", "08_y.ipynb", "10_old.ipynb"]
    assert slides.newest_date(rows, ["07_x.ipynb", "08_y.ipynb", "09_z.ipynb"]) == "2026-12-07"
    assert slides.newest_date(rows, ["07_x.ipynb"]) == "2026-12-01"
    assert slides.newest_date(rows, ["10_old.ipynb"]) is None
    text = "one notebook at a time (2026-11-28; they vary\n| [07](n/07_x.ipynb) | t | w | 26 s |"
    assert slides.set_readme_times(text, {"07": 31.6}, "2026-12-07") == text.replace(
        "2026-11-28", "2026-12-07"
    ).replace("26 s", "32 s")
    assert slides.set_readme_times(text, {}, None) == text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_has_its_slide_structure(path):
    nb = nbformat.read(path, as_version=4)
    expected = slides.structure(
        nbformat.read(path, as_version=4), path.name, slides.cpu_seconds(path.name)
    )
    assert nbformat.writes(nb) == nbformat.writes(expected), (
        f"{path.name}: slide structure or speaker notes out of date; run "
        "`python -m labkit slides --structure` (then commit the notebooks and docs/presenting.md)"
    )


def test_note_sentences_are_whole_and_end_without_an_ellipsis():
    text = (
        "Biderman et al. (2024) compare LoRA with full fine-tuning (e.g. on code). "
        "`model.eval()` turns dropout off. Next."
    )
    assert slide_fit.sentences(text) == [
        "Biderman et al. (2024) compare LoRA with full fine-tuning (e.g. on code).",
        "`model.eval()` turns dropout off.",
        "Next.",
    ]
    assert (
        slide_fit.first_sentence("Ends in 3.5 GB and 2 s. Then more.") == "Ends in 3.5 GB and 2 s."
    )
    long = "A clause long enough to be a sentence on its own, " * 3 + "; " + "then more words " * 20
    short = slide_fit.first_sentence(long + ".")
    assert short.endswith(".") and not short.endswith(";.") and len(short) < len(long)
    assert short[:-1] in long  # cut at the clause break, never inside a word
    assert slide_fit.first_sentence("No full stop: a heading-like line") == (
        "No full stop: a heading-like line."
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_speaker_notes_are_whole_sentences(path):
    """Every bullet of the committed speaker notes ends a sentence: no ellipsis, no cut word."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if slides.NOTES_TAG not in cell.metadata.get("tags", []):
            continue
        for line in cell.source.splitlines():
            if line.startswith("- "):
                end = line.rstrip()
                assert not end.endswith(("…", "...")), f"{path.name}: cut note {line[:70]!r}"
                assert end[-1] in ".!?)", f"{path.name}: note is not a sentence: {line[-70:]!r}"


#: the header and the README map (both written by `slides --structure --times`) agree within
#: max(ABS, REL * value); no test compares them with a run on this machine, whose speed varies.
TIME_TOLERANCE_S, TIME_TOLERANCE_REL = 15, 0.30


def _close(a, b):
    return abs(a - b) <= max(TIME_TOLERANCE_S, TIME_TOLERANCE_REL * max(a, b))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_header_and_readme_times_agree(path):
    header = slides.header_seconds(nbformat.read(path, as_version=4))
    readme = slides.cpu_seconds(path.name)
    assert header is not None, f"{path.name}: no '~N s on a 2-core CPU' in the title cell"
    assert readme is not None, f"{path.name}: no row in the README's course map"
    assert _close(header, readme), f"{path.name}: header ~{header:.0f} s, README {readme:.0f} s"


GPU_HEADER_RE = re.compile(r"needs a GPU:\**\s*(no|optional|yes)\b", re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_readme_gpu_column_agrees_with_the_header(path):
    """Every header says whether it needs a GPU, and the README map's word is the header's."""
    header = GPU_HEADER_RE.search(nbformat.read(path, as_version=4).cells[0].source)
    row = re.search(rf"^\| \[{path.name[:2]}\]\(.*\| (\w+)[^|\n]*\|$", README_TEXT, re.M)
    assert row is not None, f"{path.name}: no row in the README's course map"
    assert header is not None, f"{path.name}: the title cell does not say 'needs a GPU: ...'"
    assert row.group(1) == header.group(1).lower(), f"{path.name}: README {row.group(1)!r}"


TEX = re.compile(r"\$\$|\\\(|\\\[|\$[^$\n]*\\[a-zA-Z]+[^$\n]*\$")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_tex_math_so_decks_need_no_mathjax(path):
    """The offline decks load no MathJax: write formulas in code spans or Unicode instead."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            prose = re.sub(r"```.*?```|`[^`\n]*`", "", cell.source, flags=re.S)
            assert not TEX.search(prose), f"{path.name}: TeX math in {cell.source[:60]!r}"


def test_presenting_guide_plan_is_current_and_the_three_hour_path_fits():
    text = slides.PRESENTING.read_text()
    block = text.split(slides.PLAN_START, 1)[1].split(slides.PLAN_END, 1)[0]
    assert slides.plan_table(NOTEBOOKS).split(slides.PLAN_START)[1].split(slides.PLAN_END)[0] == (
        block
    ), "docs/presenting.md plan is out of date: run `python -m labkit slides --structure`"
    last = block.strip().splitlines()[-1].split("**")
    three, day = int(last[-4]), int(last[-2])
    assert three <= 165, f"the 3-hour path needs {three} min (+ breaks): drop a notebook"
    assert day <= 420, f"the full day needs {day} min (+ breaks): drop a notebook"


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(LabkitError, match="--times goes with --structure"):
        slides.cli_main(["--times", str(tmp_path / "r.json")])
    with pytest.raises(LabkitError, match="no such notebook"):
        slides.cli_main([str(tmp_path / "98_missing.ipynb")])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_header_claims_no_gpu_time(path):
    """No GPU run of the course has been timed, so no header may quote a GPU time."""
    source = nbformat.read(path, as_version=4).cells[0].source
    assert not re.search(r"~\d+ s on a GPU", source), f"{path.name}: unmeasured GPU time"
