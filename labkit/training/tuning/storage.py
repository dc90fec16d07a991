"""The storage URL of a search, checked before Optuna opens it: what may be printed of it (no
password), whether it is a database URL at all, and whether an SQLite file is a study storage
(not an in-memory database that vanishes, another program's database, a damaged file or a
folder). :func:`labkit.training.tuning.coordination.open_storage` runs these checks.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from labkit import LabkitError


def shown(url: str) -> str:
    """``url`` as it may be printed: a password replaced by ``***`` (error lines end up on
    screens and in CI logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: mask what looks like user:password@
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def sqlite_file(url: str) -> str | None:
    """The file of an ``sqlite://`` URL, '' for an in-memory database, None for other URLs."""
    if not url.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database or ""
    except Exception:
        return None  # left to open_storage's one line
    memory = database in ("", ":memory:") or "mode=memory" in url.lower()
    return "" if memory else database


def check_url(url: Any) -> None:
    if not isinstance(url, str) or "://" not in url:
        shown_url = shown(url) if isinstance(url, str) else url
        raise LabkitError(
            f"storage {shown_url!r} is not a database URL; accepted: e.g. "
            "sqlite:///path/to/study.db"
        )
    if sqlite_file(url) == "":
        raise LabkitError(
            f"storage {url!r} is an in-memory database: the study would vanish when the command "
            "ends, so it could never be resumed; accepted: a file, e.g. sqlite:///path/to/study.db"
        )


#: The tables every Optuna RDB storage has; an SQLite file with tables but not these is another
#: program's database, which opening it as a storage would fill with Optuna's 13 tables.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def check_sqlite_storage(url: str) -> None:
    """Refuse in one line an existing SQLite file that is not an Optuna storage (another
    program's database, a damaged file): opening it would add Optuna's tables to it or fail
    with a misleading message. A missing or empty file is fine (a new study storage)."""
    path = sqlite_file(url)
    folder = os.path.dirname(os.path.abspath(path)) if path else ""
    if path and os.path.isdir(path):
        raise LabkitError(f"{path} is a folder; accepted: a study file, e.g. {path}/study.db")
    if path and not os.path.isdir(folder):
        raise LabkitError(
            f"folder {folder} does not exist; create it or give a study file in an existing folder"
        )
    if not path or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    import sqlite3
    from urllib.parse import quote

    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        ) as db:
            tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
            check = db.execute("pragma quick_check").fetchone()[0]
    except sqlite3.Error as err:
        raise LabkitError(
            f"{path} is damaged or not an SQLite database ({err}); restore it from a copy, or "
            "give a study file that labkit tune or Optuna made, or a new file name"
        ) from None
    if check != "ok":
        raise LabkitError(
            f"{path} is damaged (SQLite integrity check: {check[:80]}); restore it from a copy "
            "or start a new study file"
        )
    if tables and not OPTUNA_TABLES <= tables:
        other = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise LabkitError(
            f"{path} is another program's SQLite database (tables: {other}), not an Optuna "
            "study storage; accepted: a study file that labkit tune or Optuna made, or a new "
            "file name"
        )


def password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def hide_password(text: str, url: str) -> str:
    """``text`` with ``url``'s password replaced by ``***``."""
    secret = password(url)
    return text.replace(secret, "***") if secret else text
