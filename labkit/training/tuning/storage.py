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


#: Every table of an Optuna RDB storage. A file holding another table is another program's
#: database, which opening it as a storage would fill with Optuna's tables; a file holding some
#: of these only may be a storage another worker is creating at this moment.
OPTUNA_TABLES = frozenset(
    {
        "alembic_version",
        "studies",
        "study_directions",
        "study_system_attributes",
        "study_user_attributes",
        "trial_heartbeats",
        "trial_intermediate_values",
        "trial_params",
        "trial_system_attributes",
        "trial_user_attributes",
        "trial_values",
        "trials",
        "version_info",
    }
)


def _check_path(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise LabkitError(f"{path} is a folder; accepted: a study file, e.g. {path}/study.db")
    if not os.path.isdir(folder):
        raise LabkitError(
            f"folder {folder} does not exist; create it or give a study file in an existing folder"
        )


def check_sqlite_storage(url: str) -> None:
    """Refuse in one line an SQLite path that is not an Optuna storage (a folder, another
    program's database, a damaged file): opening it would add Optuna's tables to it or fail
    with a misleading message. A missing or empty file is fine (a new study storage), and so is
    a file another process holds locked (a worker writing to the study)."""
    path = sqlite_file(url)
    if not path:
        return
    _check_path(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    import sqlite3
    from urllib.parse import quote

    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=2)
        ) as db:
            tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
            check = db.execute("pragma quick_check").fetchone()[0]
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            return  # another worker is writing: Optuna waits for it
        raise _damaged(path, err) from None
    except sqlite3.Error as err:
        raise _damaged(path, err) from None
    if check != "ok":
        raise _damaged(path, f"SQLite integrity check: {check[:80]}")
    other = sorted(tables - OPTUNA_TABLES)
    if "alembic_version" in tables and "studies" not in tables:  # another tool's migrations
        other = sorted(tables)
    if other:
        shown_tables = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
        raise LabkitError(
            f"{path} is another program's SQLite database (tables: {shown_tables}), not an "
            "Optuna study storage; accepted: a study file that labkit tune or Optuna made, or "
            "a new file name"
        )


def _damaged(path: str, why: object) -> LabkitError:
    return LabkitError(
        f"{path} is damaged or not an SQLite database ({why}); restore it from a copy, or give "
        "a study file that labkit tune or Optuna made, or a new file name"
    )


def password(url: str) -> str | None:
    """The password in ``url``, or None."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def hide_password(text: str, url: str) -> str:
    """``text`` with ``url``'s password replaced by ``***``."""
    secret = password(url)
    return text.replace(secret, "***") if secret else text
