"""Fault tests of ``python -m labkit tune``: two processes on one study, Ctrl-C and resume.

The command runs around a trivial objective (``tests/quick_tune.py``: sleep, return a number), so
what is checked is the protocol itself (no live trial failed, exactly N COMPLETE trials, different
parameters per worker, one line on Ctrl-C) and each test takes seconds.
"""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from quick_tune import quick_objective  # tests/quick_tune.py (pytest puts tests/ on sys.path)

from labkit import REPO_ROOT
from labkit.training.tuning import cli, coordination

CLI = [sys.executable, str(REPO_ROOT / "tests" / "quick_tune.py")]
ENV = {
    **os.environ,
    "LABKIT_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(REPO_ROOT),
}


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """A failed or timed-out test must not leave its ``tune`` processes running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _start(url: str, name: str, n: int, seconds: float) -> subprocess.Popen:
    """The search command on a trivial objective whose trials last ``seconds``."""
    argv = ["--storage", url, "--study-name", name, "--n-trials", str(n), "--budget", "smoke"]
    STARTED.append(
        subprocess.Popen(
            CLI + argv,
            cwd=REPO_ROOT,
            env={**ENV, "LABKIT_TEST_TRIAL_SECONDS": str(seconds)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    return STARTED[-1]


def _trials(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _wait_for(url: str, name: str, states: set, proc: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            if states <= {t.state for t in _trials(url, name)}:
                return True
        except Exception:  # not created yet, or busy
            continue
    return False


def _check_study(url: str, name: str, n: int):
    trials = _trials(url, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, [(t.number, t.state.name) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n  # no config twice
    return trials


def test_two_processes_started_together_on_a_new_study_share_it(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'new.db'}", 3
    procs = [_start(url, "s", n, seconds=0.3) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "cannot open storage" not in err
        assert "marked FAIL" not in out + err  # nobody's live trial was failed
    trials = _check_study(url, "s", n)
    assert not [t for t in trials if t.state == TrialState.FAIL]


def test_second_process_joins_a_running_search_without_failing_its_trial(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'join.db'}", 4
    first = _start(url, "s", n, seconds=1.0)
    assert _wait_for(url, "s", {TrialState.RUNNING}, first)
    second = _start(url, "s", n, seconds=1.0)
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1[-1500:] + err2[-1500:]
    assert "marked FAIL" not in out1 + err1 + out2 + err2
    trials = _check_study(url, "s", n)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs[coordination.WORKER_KEY] for t in trials)


def test_ctrl_c_is_one_line_exit_130_and_the_search_resumes(tmp_path, capsys):
    url, n = f"sqlite:///{tmp_path / 'int.db'}", 3
    proc = _start(url, "s", n, seconds=1.0)
    assert _wait_for(url, "s", {TrialState.COMPLETE, TrialState.RUNNING}, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("labkit tune: interrupted; study 's' keeps ") and "same command" in last
    before = {t.number: t.value for t in _trials(url, "s") if t.state == TrialState.COMPLETE}
    assert before and not [t for t in _trials(url, "s") if t.state == TrialState.RUNNING]

    argv = ["--storage", url, "--study-name", "s", "--n-trials", str(n), "--budget", "smoke"]
    assert cli.cli_main(argv, objective=quick_objective) == 0
    after = _check_study(url, "s", n)
    assert all(after[k].value == v for k, v in before.items())
