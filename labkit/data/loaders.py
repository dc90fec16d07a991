"""Loading the course's data sets (written by :mod:`labkit.data.generator`) and their manifest.

Every file is checked against the sha256 that the manifest of ``data/README.md`` records, once
per file and process (:mod:`labkit.files`): a file cut by a full disk or an interrupted
``build-data``, or emptied, never loads as fewer rows. A missing, cut, changed or non-JSON file is
one line naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import labkit
from labkit import DATA_DIR, LabkitError, files

SPLITS = ("train", "validation", "test")
FIX = "restore it (git checkout data/) or regenerate it (python -m labkit build-data)"
#: A row of the manifest table in data/README.md: | `path` | bytes | `sha256` |
MANIFEST_ROW = re.compile(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|\s*$", re.M)
#: (README path, mtime_ns) -> its manifest, read once per process until it changes.
_MANIFESTS: dict[tuple[str, int], dict[str, str]] = {}


def _check_split(split: str, accepted: tuple[str, ...]) -> None:
    if not isinstance(split, str) or split not in accepted:
        raise labkit.unknown("split", split, accepted)


def recorded_digests(data_dir: Path | None = None) -> dict[str, str]:
    """File (relative to the data folder, ``chat/train.jsonl``) -> the sha256 recorded in the
    manifest of that folder's ``README.md``; a copy of the data files without one is checked
    against the course's own ``data/README.md``."""
    readme = (data_dir or DATA_DIR) / "README.md"
    if not readme.is_file():
        readme = labkit.DATA_DIR / "README.md"
    try:
        key = (str(readme.resolve()), readme.stat().st_mtime_ns)
        if key not in _MANIFESTS:
            text = readme.read_text(encoding="utf-8")
            _MANIFESTS[key] = dict(MANIFEST_ROW.findall(text))
    except (OSError, UnicodeDecodeError) as err:
        raise LabkitError(
            f"cannot read the data manifest {files.shown(readme)} ({type(err).__name__}); "
            "restore it: git checkout data/README.md"
        ) from None
    return _MANIFESTS[key]


def _shown(path: Path) -> str:
    try:
        return f"data/{path.relative_to(DATA_DIR).as_posix()}"
    except ValueError:
        return str(path)


def _check_digest(path: Path) -> None:
    """``path`` against its recorded sha256 (once per file and process)."""
    rel = path.relative_to(DATA_DIR).as_posix()
    expected = recorded_digests().get(rel)
    if expected is None:
        raise LabkitError(
            f"the manifest of data/README.md records no sha256 for {rel}; restore data/README.md "
            "(git checkout data/README.md)"
        )
    files.checked_sha256(path, expected, FIX)


def _read_text(path: Path) -> str:
    """The text of a data file, or one line naming the file and the fix."""
    shown = _shown(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabkitError(f"{shown} is missing; {FIX}") from None
    except UnicodeDecodeError:
        raise LabkitError(f"{shown} is not a text file (not UTF-8); {FIX}") from None
    except OSError as err:
        raise LabkitError(f"cannot read {shown} ({err.strerror}); {FIX}") from None


def load_corpus(split: str = "train") -> list[str]:
    """The pretraining corpus, one story per line (``train`` or ``validation``)."""
    _check_split(split, ("train", "validation"))
    path = DATA_DIR / "corpus" / f"{split}.txt"
    lines = _read_text(path).splitlines()
    _check_digest(path)
    return lines


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, or one line naming the file (and the line) and the fix;
    then the file is checked against its recorded sha256."""
    shown = _shown(path)
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabkitError(
                f"{shown} line {number} is not valid JSON ({err.msg}); {FIX}"
            ) from None
        if not isinstance(record, dict):
            raise LabkitError(f"{shown} line {number} is not a JSON object; {FIX}")
        records.append(record)
    _check_digest(path)
    return records


def load_chat(split: str = "train") -> list[dict]:
    """The chat task: records with ``prompt``, ``response``, ``short``, ``intent``, ``entity``."""
    _check_split(split, SPLITS)
    return _read_jsonl(DATA_DIR / "chat" / f"{split}.jsonl")


def chat_rows_shown(text: str, split: str = "test") -> dict[str, Any]:
    """Which chat rows of ``split`` a text put in front of the model gives away (a prompt-tuning
    init text, say): ``"answer"``, the rows whose reference answer is ``text`` word for word;
    ``"intents"``, their intents; ``"pattern"``, every row of those intents (their answers share
    its pattern, e.g. "The X lives in the Y."). Row numbers count from 0 in :func:`load_chat`."""
    if not isinstance(text, str) or not text:
        raise LabkitError(f"text must be a non-empty string, got {text!r}")
    rows = load_chat(split)
    answer = [i for i, r in enumerate(rows) if r["response"] == text]
    intents = {rows[i]["intent"] for i in answer}
    pattern = [i for i, r in enumerate(rows) if r["intent"] in intents]
    return {"answer": answer, "intents": intents, "pattern": pattern}


def facts_asked(rows: list[dict]) -> str:
    """One line: how many facts the chat ``rows`` (held-out questions) ask, in how many wordings
    each, and so what one fact weighs of their exact match (a fact is an ``(intent, entity)``)."""
    if not rows or not all(isinstance(r, dict) and {"intent", "entity"} <= r.keys() for r in rows):
        raise LabkitError("rows must be a non-empty list of chat rows (load_chat)")
    per = Counter((r["intent"], r["entity"]) for r in rows)
    lo, hi, n = min(per.values()), max(per.values()), len(rows)
    each = f"{lo}" if lo == hi else f"{lo}-{hi}"
    weight = f"{lo / n:.3f}" if lo == hi else f"{lo / n:.3f}-{hi / n:.3f}"
    return (
        f"the {n} held-out questions ask {len(per)} facts, {each} wordings each: "
        f"one fact weighs {weight} of exact match"
    )


def load_sentiment(split: str = "train") -> list[dict]:
    """The sentiment set: records with ``text`` and ``label`` (1 positive, 0 negative)."""
    _check_split(split, SPLITS)
    return _read_jsonl(DATA_DIR / "sentiment" / f"{split}.jsonl")


def verify_all(data_dir: Path = DATA_DIR) -> int:
    """Check every file the manifest of ``data/README.md`` records (data, configs, the zoo
    Llama) against its sha256; returns how many. One line for the first that differs."""
    digests = recorded_digests(data_dir)
    for rel, expected in digests.items():
        files.checked_sha256(data_dir / rel, expected, FIX)
    return len(digests)


def manifest(data_dir: Path = DATA_DIR) -> list[dict]:
    """Every shipped data file (not the MiniLM package) with its size and sha256."""
    found = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md")
    return [
        {
            "path": str(p.relative_to(data_dir)),
            "bytes": p.stat().st_size,
            "sha256": files.sha256_file(p),
        }
        for p in found
    ]


def manifest_table(data_dir: Path = DATA_DIR) -> str:
    """The manifest as the markdown table kept in ``data/README.md``."""
    lines = ["| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| `{r['path']}` | {r['bytes']:,} | `{r['sha256']}` |" for r in manifest(data_dir)]
    return "\n".join(lines)
