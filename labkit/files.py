"""The course's files: safe writes and recorded sha256, so nothing is lost or silently wrong.

**Writes** that replace a file go through a temporary file in the same folder and an atomic
rename (:func:`replacing`, :func:`replace_text`): a full disk, a read-only folder or a kill in the
middle leaves the old file as it was, and a failure is one :class:`LabkitError` line.

**Digests** are recorded in two places: a model folder's ``provenance.json`` (written by
``python -m labkit build-zoo``) and the manifest of ``data/README.md``. Whoever loads such a file
checks it with :func:`checked_sha256`, wherever its folder lives. Each file is hashed once per
process: the digest is cached under the file's resolved path, size and modification time, so a
file changed on disk is hashed again and an unchanged one costs a ``stat``.

Layer 0a: models, data and the course tooling all use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from labkit import REPO_ROOT, LabkitError

# ----------------------------------------------------------------------------- paths


def shown(path: str | os.PathLike[str]) -> str:
    """A path as a message shows it: relative to the repository when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return str(p)


def read_json(path: str | os.PathLike[str], remedy: str, name: str | None = None) -> Any:
    """The JSON value in a text file, or one line naming the file (``name``, default
    :func:`shown`) when it is not UTF-8 text or not valid JSON, followed by ``remedy``."""
    label = name if name is not None else shown(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LabkitError(f"{label} is not a text file (not UTF-8); {remedy}") from None
    except json.JSONDecodeError as err:
        raise LabkitError(f"{label} is not valid JSON ({err.msg}); {remedy}") from None


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


# ----------------------------------------------------------------------------- writes


def write_error(path: str | os.PathLike[str], err: OSError, kept: bool = True) -> LabkitError:
    """One line for a failed write of ``path`` (``kept``: the old file was left as it was)."""
    old = "the file there is kept as it was; " if kept else ""
    return LabkitError(
        f"cannot write {shown(path)} ({_why(err)}); {old}accepted: a writable folder with free "
        "space"
    )


def _new_file_mode(path: Path) -> int:
    """The mode a replaced file keeps, or what a new file gets under this process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``
    atomically (same permissions as the old file, or the umask's for a new one).

    Any error inside the block removes the temporary file and leaves ``path`` untouched; an
    ``OSError`` (full disk, read-only folder) becomes one :class:`LabkitError` line.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        raise write_error(path, err) from None
    tmp = Path(name)
    try:
        mode = "wb" if binary else "w"
        with os.fdopen(fd, mode, encoding=None if binary else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replacing`."""
    with replacing(path) as fh:
        fh.write(text)


def writable_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder``, made if needed, once a file could be created in it; else one line saying why
    (a file in the way, read-only, no such place). Called before long work that writes there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LabkitError(
            f"{shown(folder)} is a file, not a folder; accepted: a folder (new or existing)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except (FileExistsError, NotADirectoryError):
        raise LabkitError(
            f"cannot make the folder {shown(folder)}: part of its path is a file; accepted: a "
            "folder path"
        ) from None
    except OSError as err:
        raise LabkitError(
            f"cannot write into {shown(folder)} ({_why(err)}); accepted: a writable folder"
        ) from None
    return folder


# ----------------------------------------------------------------------------- digests

#: (resolved path, size, mtime_ns) -> sha256 of the files already hashed in this process.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file (``hashlib.file_digest``: read in chunks, never whole)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, once per file and process (until the file changes)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(p)
    return _DIGESTS[key]


def checked_sha256(path: str | os.PathLike[str], expected: str, hint: str) -> str:
    """sha256 of ``path``, which must equal ``expected``; else one :class:`LabkitError` line
    naming the file, both digests' first 12 characters and ``hint`` (how to restore it)."""
    p = Path(path)
    if not p.exists():
        raise LabkitError(f"{shown(p)} is missing; {hint}")
    if not p.is_file():
        raise LabkitError(f"{shown(p)} is not a file; {hint}")
    try:
        got = cached_sha256(p)
    except OSError as err:
        raise LabkitError(f"cannot read {shown(p)} ({_why(err)}); {hint}") from None
    if got != expected:
        raise LabkitError(
            f"{shown(p)} has sha256 {got[:12]}..., expected {expected[:12]}... (damaged or "
            f"replaced); {hint}"
        )
    return got
