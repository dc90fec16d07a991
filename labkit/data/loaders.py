"""Loading the course's data sets (written by :mod:`labkit.data.generator`) and their manifest.

A missing, cut or non-JSON file is one line naming the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import labkit
from labkit import DATA_DIR, LabkitError

SPLITS = ("train", "validation", "test")


def _check_split(split: str, accepted: tuple[str, ...]) -> None:
    if split not in accepted:
        raise labkit.unknown("split", split, accepted)


def load_corpus(split: str = "train") -> list[str]:
    """The pretraining corpus, one story per line (``train`` or ``validation``)."""
    _check_split(split, ("train", "validation"))
    return (DATA_DIR / "corpus" / f"{split}.txt").read_text().splitlines()


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, or one line naming the file (and the line) and the fix."""
    try:
        shown = f"data/{path.relative_to(DATA_DIR).as_posix()}"
    except ValueError:
        shown = str(path)
    fix = "restore it (git checkout data/) or regenerate it (python -m labkit build-data)"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabkitError(f"{shown} is missing; {fix}") from None
    except UnicodeDecodeError:
        raise LabkitError(f"{shown} is not a text file (not UTF-8); {fix}") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabkitError(
                f"{shown} line {number} is not valid JSON ({err.msg}); {fix}"
            ) from None
        if not isinstance(record, dict):
            raise LabkitError(f"{shown} line {number} is not a JSON object; {fix}")
        records.append(record)
    return records


def load_chat(split: str = "train") -> list[dict]:
    """The chat task: records with ``prompt``, ``response``, ``short``, ``intent``, ``entity``."""
    _check_split(split, SPLITS)
    return _read_jsonl(DATA_DIR / "chat" / f"{split}.jsonl")


def load_sentiment(split: str = "train") -> list[dict]:
    """The sentiment set: records with ``text`` and ``label`` (1 positive, 0 negative)."""
    _check_split(split, SPLITS)
    return _read_jsonl(DATA_DIR / "sentiment" / f"{split}.jsonl")


def manifest(data_dir: Path = DATA_DIR) -> list[dict]:
    """Every shipped data file (not the MiniLM package) with its size and sha256."""
    from labkit.models.zoo import sha256_file

    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md")
    return [
        {"path": str(p.relative_to(data_dir)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]


def manifest_table(data_dir: Path = DATA_DIR) -> str:
    """The manifest as the markdown table kept in ``data/README.md``."""
    lines = ["| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| `{r['path']}` | {r['bytes']:,} | `{r['sha256']}` |" for r in manifest(data_dir)]
    return "\n".join(lines)
