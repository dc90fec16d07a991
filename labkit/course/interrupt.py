"""Crashing a search on purpose: notebook 14's demo (and the tests') of what a resume must handle.

:func:`kill_mid_search` starts ``python -m labkit tune`` and SIGKILLs it while a trial runs, as a
crash or a closed laptop would: no handler runs, the trial stays RUNNING in the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from labkit import REPO_ROOT

TUNE = (sys.executable, "-m", "labkit", "tune")


def kill_mid_search(
    argv: list[str],
    storage: str,
    study_name: str,
    timeout: float = 300.0,
    command: tuple[str, ...] = TUNE,
) -> list[optuna.trial.FrozenTrial]:
    """Start ``command ARGV`` (``python -m labkit tune`` by default) and SIGKILL it mid-trial;
    return the study's trials.

    It waits until at least one trial is COMPLETE and another is RUNNING with at least one
    parameter drawn, then freezes the
    process (SIGSTOP) and reads the study again: a trial can finish between a read and the kill,
    so it kills only while a trial is still RUNNING, and otherwise lets the search go on. The
    process is gone when this returns, whatever happened.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [*command, *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name=study_name, storage=storage).trials
            except Exception:  # the study does not exist yet, or the file is busy
                continue
            if _mid_trial(trials) and _still_mid_trial(proc, storage, study_name):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not killed:
        raise RuntimeError(f"the search ended (status {proc.returncode}) before it could be killed")
    return optuna.load_study(study_name=study_name, storage=storage).trials


def _mid_trial(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """At least one trial COMPLETE and another RUNNING that has stored a parameter (a kill the
    moment a trial starts, before it draws anything, shows nothing a resume must handle)."""
    complete = any(t.state == TrialState.COMPLETE for t in trials)
    return complete and any(t.state == TrialState.RUNNING and t.params for t in trials)


def _still_mid_trial(proc: subprocess.Popen, storage: str, study_name: str) -> bool:
    """Freeze ``proc`` and read the study again; True (still frozen) if a trial still RUNS, else
    let it continue and return False (the trial finished after the last read)."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        if _mid_trial(optuna.load_study(study_name=study_name, storage=storage).trials):
            return True
    except Exception:  # the file is locked by the frozen writer: look again later
        pass
    os.kill(proc.pid, signal.SIGCONT)
    return False
