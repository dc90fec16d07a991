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
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

from labkit import REPO_ROOT, LabkitError
from labkit.cli import Parser
from labkit.hardware import LOCK_FILE, locked_torch_spec

BUNDLE_DIR = REPO_ROOT / "build" / "bundle"
TORCH_SPEC = locked_torch_spec()
#: What an editable install (``pip install -e``) builds with, offline.
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]

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


def tracked_files(repo: Path = REPO_ROOT) -> list[str]:
    """Files git tracks in ``repo`` (as they are on disk now), sorted."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise LabkitError(
            f"the bundle packs `git ls-files`, which failed in {repo}: {err}"
        ) from err
    return sorted(f for f in out.split("\0") if f and (repo / f).is_file())


def pack_repository(target: Path, repo: Path = REPO_ROOT) -> int:
    """Write ``target`` (tar.gz of the tracked files under ``course/``); returns the file count."""
    files = tracked_files(repo)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for name in files:
            tar.add(repo / name, arcname=f"course/{name}", recursive=False)
    return len(files)


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
    _pip(
        "download", "-q", "-d", str(wheelhouse), *lock, *torch, *BUILD_REQUIREMENTS, *requirements()
    )
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
    out.mkdir(parents=True, exist_ok=True)
    n = pack_repository(out / "course.tar.gz")
    print(f"course.tar.gz: {n} files", flush=True)
    if wheels:
        count = fill_wheelhouse(out / "wheelhouse", torch_spec)
        print(f"wheelhouse: {count} wheels", flush=True)
    (out / "INSTALL.md").write_text(
        INSTALL.format(
            python=f"{sys.version_info.major}.{sys.version_info.minor}", platform=sys.platform
        )
    )
    return out


def unpack(bundle: Path, dest: Path) -> Path:
    """Extract ``bundle/course.tar.gz`` into ``dest``; returns ``dest/course``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle / "course.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "course"


def check(bundle: Path = BUNDLE_DIR, work: Path | None = None) -> int:
    """Install the bundle as INSTALL.md says, with no index, in a fresh folder; run notebook 00."""
    work = work or bundle / "check"
    shutil.rmtree(work, ignore_errors=True)
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
        subprocess.run(cmd, cwd=course, env=env, check=True)
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
        if not (args.out / "wheelhouse").is_dir():
            raise LabkitError(f"no bundle in {args.out}; run `make bundle` first")
        return check(args.out)
    build(args.out, args.torch, wheels=not args.no_wheels)
    print(f"bundle: {args.out} (see {args.out / 'INSTALL.md'})")
    return 0
