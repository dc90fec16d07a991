"""environment.yml (conda) and pyproject.toml (pip) describe the same environment."""

import re
import tomllib

from labkit import REPO_ROOT


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    yml = (REPO_ROOT / "environment.yml").read_text()
    pip_section = yml.split("- pip:", 1)[1]
    conda_reqs = [
        m.group(1) for m in re.finditer(r"^\s+- ([a-zA-Z][^\s#]*)\s*$", pip_section, re.M)
    ]
    assert sorted(map(_norm, pip_reqs)) == sorted(map(_norm, conda_reqs))
    assert 'requires-python = ">=3.11"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert "python>=3.11" in yml


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[-1] == "make test"
    assert "make test" in readme and "make course" in readme
