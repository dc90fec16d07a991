"""The offline bundle: what a presenter copies to each machine of a room with no network.

``python -m labkit bundle`` (``make bundle``) writes ``build/bundle/``:

- ``course.tar.gz``: the repository as committed-or-edited files (``git ls-files``), models and
  data included, under ``course/``;
- ``wheelhouse/``: a wheel of every package ``make setup`` installs, for this platform and Python,
  at the versions of the lock (constraints.txt, torch included), plus the build backend an
  editable install needs;
- ``INSTALL.md``: the commands below.

On a machine with no network::

    tar xzf course.tar.gz && cd course
    PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/../wheelhouse make setup
    make lab

``--check`` installs the bundle that way into a fresh folder and runs notebook 00 from it
(``make bundle-check``): the proof that the wheelhouse is complete.

The bundle is the room's only copy, so it is refused rather than packed short or damaged: every
tracked file must be on disk, and every file with a recorded sha256 (``data/README.md``'s
manifest: data, configs, the zoo Llama) must match it. The archive is written to a temporary file
and renamed into place; ``--check`` removes only a check folder it made itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

from labkit import REPO_ROOT, LabkitError, files
from labkit.cli import Parser
from labkit.data import loaders
from labkit.hardware import LOCK_FILE, locked_torch_spec

BUNDLE_DIR = REPO_ROOT / "build" / "bundle"
#: The file ``--check`` leaves in the folder it makes: only such a folder is ever removed.
CHECK_MARK = ".labkit-bundle-check"
TORCH_SPEC = locked_torch_spec()

INSTALL = """# Installing the course with no network

Copy this folder (course.tar.gz, wheelhouse/) to the machine; it needs Python {python} on the
same platform ({platform}) and `make`. Then:

```bash
tar xzf course.tar.gz && cd course
PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/../wheelhouse make setup
make lab          # learners
make slides       # presenter: offline decks in build/slides/
```

`PIP_NO_INDEX=1` makes pip use only the wheelhouse: nothing is downloaded.
"""


def requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """The project's requirements with its test extra (what ``make setup`` installs)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["test"])


def build_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """What the editable install (``pip install -e``) builds with: ``[build-system] requires``.

    pip installs it into a temporary build environment that the lock does not reach, so the
    wheelhouse must hold a version inside this range (setuptools 70.1+ needs no ``wheel``).
    """
    return list(tomllib.loads(pyproject.read_text())["build-system"]["requires"])


def tracked_files(repo: Path = REPO_ROOT) -> list[str]:
    """Files git tracks in ``repo`` (as they are on disk now), sorted; one line when a tracked
    file is missing on disk (the bundle would silently lack it)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise LabkitError(
            f"the bundle packs `git ls-files`, which failed in {repo}: {err}"
        ) from err
    names = sorted(f for f in out.split("\0") if f)
    missing = [f for f in names if not (repo / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LabkitError(
            f"{len(missing)} tracked file(s) are missing on disk ({missing[0]}{more}), so the "
            "bundle would lack them; restore them (git checkout -- FILE) or commit their "
            "removal (git rm FILE)"
        )
    return names


def pack_repository(target: Path, repo: Path = REPO_ROOT) -> int:
    """Write ``target`` (tar.gz of the tracked files under ``course/``); returns the file count.

    Refused in one line, before anything is written: a tracked file missing on disk, or a file
    whose sha256 differs from the one ``data/README.md`` records (damaged zoo weights or data).
    The archive is written to a temporary file and renamed into place.
    """
    names = tracked_files(repo)
    loaders.verify_all(repo / "data")
    files.writable_folder(target.parent)
    with files.replacing(target, binary=True) as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        for name in names:
            tar.add(repo / name, arcname=f"course/{name}", recursive=False)
    return len(names)


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fill_wheelhouse(wheelhouse: Path, torch_spec: str = TORCH_SPEC) -> int:
    """Download a wheel of every requirement (and theirs) into ``wheelhouse``; returns the count.

    Needs the package index once (this is the step done while online).
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    torch = [] if torch_spec == "none" else [torch_spec]
    # one resolve through the lock, so the wheels are the versions `make setup` installs
    lock = ["-c", str(LOCK_FILE)]
    backend = build_requirements()
    _pip("download", "-q", "-d", str(wheelhouse), *lock, *torch, *backend, *requirements())
    sdists = [p.name for p in wheelhouse.iterdir() if not p.name.endswith(".whl")]
    if sdists:  # an sdist would need its build tools on the offline machine
        _pip(
            "wheel",
            "-q",
            "-w",
            str(wheelhouse),
            "--no-deps",
            *map(str, sorted(wheelhouse / s for s in sdists)),
        )
        for s in sdists:
            (wheelhouse / s).unlink()
    return sum(1 for p in wheelhouse.iterdir() if p.suffix == ".whl")


def build(out: Path = BUNDLE_DIR, torch_spec: str = TORCH_SPEC, wheels: bool = True) -> Path:
    """Write the bundle into ``out`` (``wheels=False``: repository and INSTALL.md only)."""
    files.writable_folder(out)
    n = pack_repository(out / "course.tar.gz")
    print(f"course.tar.gz: {n} files", flush=True)
    if wheels:
        count = fill_wheelhouse(out / "wheelhouse", torch_spec)
        print(f"wheelhouse: {count} wheels", flush=True)
    files.replace_text(
        out / "INSTALL.md",
        INSTALL.format(
            python=f"{sys.version_info.major}.{sys.version_info.minor}", platform=sys.platform
        ),
    )
    return out


def unpack(bundle: Path, dest: Path) -> Path:
    """Extract ``bundle/course.tar.gz`` into ``dest``; returns ``dest/course``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle / "course.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "course"


def _fresh_check_folder(work: Path) -> None:
    """Empty ``work`` for a new check: only a folder an earlier check made (it holds
    :data:`CHECK_MARK`) or an empty one is removed, never a folder of someone else's."""
    if work.is_dir() and any(work.iterdir()) and not (work / CHECK_MARK).is_file():
        raise LabkitError(
            f"{files.shown(work)} holds files an earlier bundle check did not write; move them "
            "away (the check unpacks the bundle there)"
        )
    if work.exists() and not work.is_dir():
        raise LabkitError(f"{files.shown(work)} is a file; accepted: a folder for the check")
    shutil.rmtree(work, ignore_errors=True)
    files.writable_folder(work)
    (work / CHECK_MARK).write_text("made by python -m labkit bundle --check\n")


def check(bundle: Path = BUNDLE_DIR, work: Path | None = None) -> int:
    """Install the bundle as INSTALL.md says, with no index, in a fresh folder; run notebook 00."""
    if not (bundle / "course.tar.gz").is_file() or not (bundle / "wheelhouse").is_dir():
        raise LabkitError(f"no bundle in {bundle}; run `make bundle` first")
    work = work or bundle / "check"
    _fresh_check_folder(work)
    course = unpack(bundle, work)
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str((bundle / "wheelhouse").resolve()),
    }
    env.pop("PYTHONPATH", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    for cmd in (
        ["make", "setup", f"PYTHON={sys.executable}"],
        [".venv/bin/python", "-m", "labkit", "zoo"],
        [".venv/bin/python", "-m", "labkit", "course", "notebooks/00_setup_and_tour.ipynb"],
    ):
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=course, env=env).returncode:
            raise LabkitError(f"the bundle check failed at `{' '.join(cmd)}` (see above) in {work}")
    print(f"bundle check passed: installed with no index and ran notebook 00 in {work}")
    return 0


def cli_main(argv: list[str]) -> int:
    parser = Parser(prog="python -m labkit bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR, help="folder (build/bundle)")
    parser.add_argument(
        "--torch", default=TORCH_SPEC, help=f"torch requirement ({TORCH_SPEC}; none: leave out)"
    )
    parser.add_argument(
        "--no-wheels", action="store_true", help="repository and INSTALL.md only (no download)"
    )
    parser.add_argument(
        "--check", action="store_true", help="install an existing bundle offline and run 00"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    build(args.out, args.torch, wheels=not args.no_wheels)
    print(f"bundle: {args.out} (see {args.out / 'INSTALL.md'})")
    return 0
