"""The ``python -m labkit`` command line: one dispatcher, each command lives in its topic module.

Every command is ``module:function`` taking ``argv`` and returning an exit status. Bad input is
reported as one line on stderr with exit status 2 (argparse's convention), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import labkit
from labkit import LabkitError

COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": (
        "labkit.fit.estimate_cli:cli_main",
        "estimate memory and time for training or inference",
    ),
    "tune": (
        "labkit.training.tuning.cli:cli_main",
        "hyperparameter search with Optuna (resumable)",
    ),
    "course": (
        "labkit.course.runner:cli_main",
        "execute every notebook and write build/course-report.json",
    ),
    "slides": (
        "labkit.course.slides:cli_main",
        "offline reveal.js decks; --structure: slide metadata",
    ),
    "bundle": ("labkit.course.bundle:cli_main", "offline install bundle: wheelhouse + repository"),
    "build-zoo": (
        "labkit.course.build_zoo:cli_main",
        "rebuild the offline zoo Llama from its corpus",
    ),
    "build-data": ("labkit.data.generator:cli_main", "regenerate the course data sets in data/"),
    "zoo": ("labkit.models.zoo:cli_main", "list the offline model zoo and verify its checksums"),
    "env": ("labkit.hardware:cli_main", "print versions and hardware"),
}


class Parser(argparse.ArgumentParser):
    """The one argparse for every command: errors become a one-line :class:`LabkitError`
    (exit 2 through :func:`main`), never a usage dump or a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LabkitError(f"{message.replace(chr(10), ' ')}; see {self.prog} --help")


def usage() -> str:
    lines = ["usage: python -m labkit COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"labkit: {labkit.unknown('command', name, COMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except LabkitError as err:
        print(f"labkit {name}: {err}", file=sys.stderr)
        return 2
