"""What fits on a slide: cell heights against a 1280x720 screen, long outputs kept off, and
speaker notes cut to whole sentences.

reveal.js draws a 1100x760 slide, scaled to the screen. The deck template
(``labkit/assets/slides/offline_reveal.html.j2``) caps a code cell's input, a text output and a
figure at :data:`CODE_MAX_PX`, :data:`TEXT_MAX_PX` and :data:`FIGURE_MAX_PX`, and all of a
cell's outputs together at :data:`OUTPUT_MAX_PX` (the rest scrolls inside its own box);
:func:`cell_height` estimates a cell's height under those caps, and
:func:`fit_slides` starts a new sub-slide where the next cell would take a slide past
:data:`SLIDE_PX`. A code cell whose output is long (:func:`is_long_output`) is tagged
:data:`LONG_TAG`: the deck shows its code and one line instead of the output.
``scripts/browser_check.py`` renders a deck in headless Chromium. A speaker note says a
section's first sentence whole (:func:`sentences`, :func:`first_sentence`): never cut mid-word or
with an ellipsis.
"""

from __future__ import annotations

import base64
import math
import re

LONG_TAG = "slides-long-output"
#: A code cell's output is "long" (kept off its slide) past this many lines, or this many lines of
#: code and output together, or this many HTML table rows.
LONG_OUTPUT_LINES = 20
LONG_CELL_LINES = 32
LONG_TABLE_ROWS = 12
#: The height budget of a slide and the template's caps, px (see the module docstring).
SLIDE_PX = 680
CODE_MAX_PX, TEXT_MAX_PX, FIGURE_MAX_PX, OUTPUT_MAX_PX = 220, 200, 280, 440
TEXT_LINE_PX, CODE_LINE_PX, TABLE_ROW_PX, CHARS_PER_LINE = 27, 22, 33, 100


def output_size(cell) -> tuple[int, int]:
    """(lines of text output, HTML table rows) of a code cell's stored outputs."""
    lines = rows = 0
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            lines += out.get("text", "").count("\n")
        data = out.get("data", {})
        if "text/html" in data:
            rows += str(data["text/html"]).count("<tr")
        elif "text/plain" in data and "image/png" not in data:
            lines += str(data["text/plain"]).count("\n") + 1
        if out.get("output_type") == "error":
            lines += len(out.get("traceback", []))
    return lines, rows


def is_long_output(cell) -> bool:
    """Whether a code cell's output would overflow its slide (see the LONG_* limits)."""
    if cell.cell_type != "code":
        return False
    lines, rows = output_size(cell)
    code_lines = cell.source.count("\n") + 1
    return (
        lines > LONG_OUTPUT_LINES
        or (lines > 8 and lines + code_lines > LONG_CELL_LINES)
        or rows > LONG_TABLE_ROWS
    )


def _png_height(data: str) -> int:
    """Pixel height of a base64 PNG (from its IHDR chunk)."""
    head = base64.b64decode(str(data)[:64])
    return int.from_bytes(head[20:24], "big") if head[1:4] == b"PNG" else FIGURE_MAX_PX


def _markdown_height(source: str) -> int:
    text = re.sub(r"<details>.*?</details>", "Solution", source, flags=re.S)
    height, paragraph = 0, ""
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        new_block = (
            not stripped
            or stripped.startswith(("#", "|", "- ", "* ", "```"))
            or (stripped[:1].isdigit() and stripped[1:3] in (". ", ") "))
        )
        if new_block and paragraph:
            height += TEXT_LINE_PX * math.ceil(len(paragraph) / CHARS_PER_LINE) + 12
            paragraph = ""
        if stripped.startswith("#"):
            height += 64 if stripped.startswith("## ") else 50
        elif stripped.startswith("|"):
            height += 0 if set(stripped) <= set("|-: ") else TABLE_ROW_PX
        elif stripped.startswith("```"):
            height += 10
        elif stripped:
            paragraph += " " + stripped
    return height


def cell_height(cell) -> int:
    """Estimated height of a cell on its slide, px, with the deck template's caps."""
    if cell.cell_type == "markdown":
        return _markdown_height(cell.source)
    code = min(CODE_LINE_PX * (cell.source.count("\n") + 1), CODE_MAX_PX) + 40
    if LONG_TAG in cell.metadata.get("tags", []):
        return code + CODE_LINE_PX + 16
    out = 0
    for o in cell.get("outputs", []):
        data = o.get("data", {})
        if "image/png" in data:
            out += min(_png_height(data["image/png"]), FIGURE_MAX_PX) + 10
        elif o.get("output_type") == "stream" and o.get("name") != "stderr":
            out += min(CODE_LINE_PX * o.get("text", "").count("\n"), TEXT_MAX_PX) + 24
        elif "text/plain" in data and "image/png" not in data:
            out += CODE_LINE_PX * (str(data["text/plain"]).count("\n") + 1) + 10
    return code + min(out, OUTPUT_MAX_PX + 10)


def fit_slides(cells: list) -> None:
    """Start a new sub-slide where the next cell would take the slide past :data:`SLIDE_PX`."""
    used = 0
    for cell in cells:
        kind = cell.metadata.get("slideshow", {}).get("slide_type")
        if kind in ("skip", "notes"):
            continue
        height = cell_height(cell)
        if kind in ("slide", "subslide"):
            used = height
        elif used and used + height > SLIDE_PX:
            cell.metadata["slideshow"]["slide_type"] = "subslide"
            used = height
        else:
            used += height


#: Words ending in a full stop that do not end a sentence ("Biderman et al. show", "e.g. the").
ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "vs.", "cf.", "approx.", "Fig.", "Eq.", "No.")
#: A note's sentence longer than this is shortened at its last top-level "; " or ": " before it
#: (an independent clause, ended with a full stop); a sentence with no such break stays whole.
NOTE_SENTENCE_CHARS = 260


def _top_level(text: str) -> list[int]:
    """Indices of the characters of ``text`` outside code spans and brackets."""
    found, depth, code = [], 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif code:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif depth == 0:
            found.append(i)
    return found


def sentences(text: str) -> list[str]:
    """``text`` cut into whole sentences: at ``.``, ``!`` or ``?`` followed by a space and
    anything but a digit, never inside a code span or brackets, nor after an abbreviation
    (:data:`ABBREVIATIONS`)."""
    out, start = [], 0
    for i in _top_level(text):
        if text[i] not in ".!?" or (i + 1 < len(text) and not text[i + 1].isspace()):
            continue
        rest = text[i + 1 :].lstrip()
        if rest[:1].isdigit():
            continue
        if any(text[: i + 1].endswith(a) for a in ABBREVIATIONS):
            continue
        out.append(text[start : i + 1].strip())
        start = i + 1
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def first_sentence(text: str, limit: int = NOTE_SENTENCE_CHARS) -> str:
    """The first whole sentence of ``text``; one longer than ``limit`` is shortened to its
    leading independent clauses, cut at a top-level ``; `` (else ``: ``) before ``limit``, else
    at the first such break after it; never mid-clause, never with an ellipsis."""
    found = sentences(text)
    if not found:
        return ""
    sentence = found[0]
    if len(sentence) > limit:
        breaks = [
            i
            for i in _top_level(sentence)
            if sentence[i] in ";:" and sentence[i + 1 : i + 2] == " " and i >= 60
        ]
        before = [i for i in breaks if i <= limit]
        semicolons = [i for i in before if sentence[i] == ";"]
        cut = (semicolons or before or breaks[:1] or [None])[-1]
        if cut is not None:
            sentence = sentence[:cut].rstrip(" ,")
    return sentence if sentence[-1] in ".!?" else sentence.rstrip(":;,") + "."
