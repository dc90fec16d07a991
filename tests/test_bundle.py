"""The offline bundle installs with no package index into a fresh virtualenv.

CI cannot afford to download and install the full wheelhouse (~1 GB of installs, torch included:
`make bundle-check` does that). This test builds the bundle's repository archive for real and
installs it with `pip --no-index` into a fresh virtualenv, whose third-party packages are this
environment's (linked in, as a wheelhouse would provide them). It proves: the archive holds
everything the course needs to import labkit and verify the model zoo (models and data
included), and the editable install the Makefile does works with no index and no build download.
"""

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from labkit import LabkitError
from labkit.course import bundle


def test_requirements_are_pyprojects_with_the_test_extra():
    reqs = bundle.requirements()
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("nbval") for r in reqs)


def test_build_requirements_are_pyprojects_build_system(tmp_path):
    """The wheelhouse gets the backend pyproject.toml names, one that reads its PEP 639 licence."""
    reqs = bundle.build_requirements()
    assert [r.split(">")[0] for r in reqs] == ["setuptools"]
    assert SpecifierSet(reqs[0].removeprefix("setuptools")).contains("77.0.3")
    assert not SpecifierSet(reqs[0].removeprefix("setuptools")).contains("76.1")
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[build-system]\nrequires = ["flit_core>=3.9"]\n')
    assert bundle.build_requirements(toml) == ["flit_core>=3.9"]


def test_archive_holds_the_tracked_files_with_models_and_data(tmp_path):
    n = bundle.pack_repository(tmp_path / "course.tar.gz")
    with tarfile.open(tmp_path / "course.tar.gz") as tar:
        names = set(tar.getnames())
    assert len(names) == n == len(bundle.tracked_files())
    for must in ("course/Makefile", "course/pyproject.toml", "course/labkit/__init__.py"):
        assert must in names
    assert any(x.startswith("course/data/models/zoo-llama/") for x in names)
    assert not any("/.venv/" in x or x.startswith("course/build/") for x in names)


def _overlay(target: Path) -> Path:
    """A folder linking this environment's packages, without labkit and without .pth hooks."""
    target.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if (
            entry.name.startswith(("labkit", "__editable__", "__pycache__"))
            or entry.suffix == ".pth"
        ):
            continue
        (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_bundle_installs_with_no_index_into_a_fresh_venv(tmp_path):
    out = bundle.build(tmp_path / "bundle", wheels=False)
    (out / "wheelhouse").mkdir()  # third-party wheels come from the overlay instead
    course = bundle.unpack(out, tmp_path / "machine")
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    py = fresh / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    Path(purelib, "bundle_test_deps.pth").write_text(f"{_overlay(tmp_path / 'deps')}\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PIP_FIND_LINKS"}}
    env |= {"PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index"]
    pip += ["--find-links", str(out / "wheelhouse"), "--no-build-isolation", "-e", str(course)]
    done = subprocess.run(pip, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    where = subprocess.run(
        [py, "-c", "import labkit; print(labkit.REPO_ROOT)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert Path(where) == course  # labkit comes from the unpacked bundle, not this checkout
    zoo = subprocess.run(
        [py, "-m", "labkit", "zoo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=course,
        timeout=300,
    )
    assert zoo.returncode == 0 and "zoo-llama" in zoo.stdout, zoo.stdout + zoo.stderr[-1000:]


def test_check_needs_a_built_bundle(tmp_path):
    with pytest.raises(LabkitError, match="run `make bundle` first"):
        bundle.cli_main(["--check", "--out", str(tmp_path)])
