"""The lock (constraints.txt) is the one source of versions, and the installed ones are its.

`make setup`, the offline bundle and environment.yml all install through constraints.txt;
pyproject.toml's ranges only say what is expected to work. These tests fail with one line naming
the package when the environment, a copy of a pin, or a version fact the course states drifts
from the lock.
"""

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from labkit import REPO_ROOT, LabkitError
from labkit.hardware import LOCK_FILE, locked_torch_spec, locked_versions, version_drift

LOCKED = locked_versions()
FIX = 'reinstall from the lock: python -m pip install -c constraints.txt -e ".[test]"'


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(r) for r in reqs]


def _lock_python() -> str:
    """major.minor of the Python `make lock` ran on (its header line)."""
    made_on = re.search(r"^# made on: python (\d+\.\d+)\.\d+", LOCK_FILE.read_text(), re.M)
    assert made_on, (
        "constraints.txt has no '# made on: python X.Y.Z ...' line (make lock writes it)"
    )
    return made_on.group(1)


def test_the_lock_pins_every_package_once_and_not_labkit():
    assert "labkit" not in LOCKED
    assert "+" not in LOCKED["torch"], "a build label (+cpu) would not install from PyPI"
    names = [ln.split("==")[0] for ln in LOCK_FILE.read_text().splitlines() if "==" in ln]
    assert len(names) == len(set(names)) == len(LOCKED)


def test_pyproject_ranges_admit_the_locked_versions():
    """Every direct requirement is locked, at a version its range allows."""
    for req in _project_requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in LOCKED, f"{req.name} is required by pyproject.toml but not in the lock"
        assert req.specifier.contains(LOCKED[name]), (
            f"{req.name}=={LOCKED[name]} in the lock is outside pyproject.toml's {req}"
        )


def test_environment_yml_installs_through_the_lock_with_a_cpu_torch():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert [d for d in deps if not isinstance(d, dict)] == [f"python={_lock_python()}", "pip"]
    # no version of its own: the lock gives every one; the CPU index keeps torch off CUDA
    assert pip == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "-c constraints.txt",
        "-e .[test]",
    ]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains(f"{_lock_python()}.0")


@pytest.mark.parametrize(
    "path",
    ["Makefile", "README.md", "environment.yml", "docs/presenting.md", "labkit/course/bundle.py"],
)
def test_the_torch_pin_is_written_only_in_the_lock(path):
    text = (REPO_ROOT / path).read_text()
    assert not re.search(r"torch==\d", text), f"{path} repeats the torch pin; read it from the lock"
    assert locked_torch_spec() == f"torch=={LOCKED['torch']}"


def _outside_this_env(name: str) -> bool:
    """Installed outside sys.prefix: a system package the learner kept (TORCH_SPEC=none)."""
    where = Path(md.distribution(name).locate_file("")).resolve()
    return not where.is_relative_to(Path(sys.prefix).resolve())


def test_the_installed_versions_are_the_locked_ones():
    skip = ("torch",) if _outside_this_env("torch") else ()
    drift = version_drift(skip=skip)
    assert not drift, "\n".join([*drift, FIX])


def test_drift_is_one_line_naming_the_package_and_both_versions(tmp_path):
    lock = tmp_path / "constraints.txt"
    torch = md.version("torch").split("+")[0]
    lock.write_text(f"# a comment\ntorch=={torch}\nPyTest==0.0.1\nno-such-package==1.0\n")
    assert version_drift(lock) == [
        f"pytest {md.version('pytest')} is installed; the course is tested with 0.0.1 "
        "(constraints.txt)",
        "no-such-package is not installed; the course is tested with 1.0 (constraints.txt)",
    ]
    lock.write_text("torch>=2\n")
    with pytest.raises(LabkitError, match=r"constraints.txt:1: 'torch>=2' is not a pin"):
        locked_versions(lock)


# Version facts the course states, and where: a lock outside one means re-checking it there.
FACTS = [
    ("torch", "==2.13.*", "labkit.memory.dryrun/measure patch torch 2.13 internals"),
    ("transformers", "==5.24.*", "labkit.memory.activations is derived from 5.24's modeling code"),
    ("peft", "==0.21.*", "prefix tuning's generate needs use_cache=False (README, pitfalls)"),
    (
        "bitsandbytes",
        ">=0.49.0,<=0.50.2",
        "the AVX512-BF16 4-bit repacking bug (README, docs/pitfalls.md, "
        "labkit.tuners.quantized_merge.keep_cpu_4bit_layout)",
    ),
]


@pytest.mark.parametrize(("package", "spec", "where"), FACTS, ids=[f[0] for f in FACTS])
def test_the_lock_is_inside_the_version_facts_the_course_states(package, spec, where):
    assert SpecifierSet(spec).contains(LOCKED[package]), (
        f"the lock has {package}=={LOCKED[package]}, outside {spec}: re-check {where}"
    )


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in {"TORCH_SPEC", "VENV_FLAGS"}},
    )


@pytest.fixture
def made_venv(tmp_path) -> Path:
    """A copy of the Makefile and lock beside a .venv made with the defaults (no packages)."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".torch-spec").write_text(locked_torch_spec() + "\n")
    (venv / ".venv-flags").write_text("\n")
    (venv / ".installed").touch()
    return tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_made_venv_refuses_another_torch_spec_instead_of_ignoring_it(made_venv):
    assert _make(made_venv, "venv-spec").returncode == 0
    done = _make(made_venv, "setup", "TORCH_SPEC=none", "VENV_FLAGS=--system-site-packages")
    assert done.returncode != 0
    assert (
        f".venv was made with TORCH_SPEC={locked_torch_spec()} VENV_FLAGS=, not "
        "TORCH_SPEC=none VENV_FLAGS=--system-site-packages; remove it"
    ) in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_changed_lock_reinstalls_through_it_with_the_recorded_torch(made_venv):
    assert "pip install" not in _make(made_venv, "-n", "setup").stdout  # up to date
    cuda_build = f"{locked_torch_spec()}+cu128"  # a TORCH_SPEC chosen at setup
    (made_venv / ".venv" / ".torch-spec").write_text(cuda_build + "\n")
    os.utime(made_venv / "constraints.txt")  # newer than the stamp, as after a `git pull`
    plan = _make(made_venv, "-n", "setup").stdout
    assert f'-m pip install -q -c constraints.txt "{cuda_build}"' in plan
    assert '-m pip install -q -c constraints.txt -e ".[test]"' in plan
