"""``labkit.distributed.launch.run`` stops every rank, started or not, and returns within seconds.

torch's elastic agent starts each worker in a session of its own, so killing the launcher's
process group is not enough; these tests stop a job before, during and after its ranks start,
on a quiet machine and with both cores busy, and then look for any process of the job left.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from labkit import LabkitError
from labkit.distributed import launch

pytestmark = pytest.mark.slow  # every test starts a two-rank job (make quick leaves them out)

SLEEPER = "tests.launch_sleeper"
MARK = "LABKIT_TEST_MARK"
# a stop must return this many seconds after the timeout, on any machine
GRACE = 20.0


@pytest.fixture
def mark(monkeypatch):
    """A unique value every process of the launch inherits, to find survivors by."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    yield value
    leftover = launch.processes_with(MARK, value)
    for proc in leftover:  # never leave anything running, even when the test failed
        proc.kill()
    assert not leftover, f"processes left running: {[p.pid for p in leftover]}"


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture
def busy_cores():
    """Keep every core busy for the test (the machine 'under load')."""
    workers = [
        multiprocessing.get_context("spawn").Process(target=_spin, args=(300,), daemon=True)
        for _ in range(os.cpu_count() or 2)
    ]
    for w in workers:
        w.start()
    yield
    for w in workers:
        w.kill()
        w.join(timeout=10)


def _stop_after(timeout: float, folder: Path, mark: str) -> tuple[int, float]:
    """Run a never-ending 2-rank job with ``timeout``; return (ranks started, seconds taken)."""
    start = time.monotonic()
    with pytest.raises(LabkitError, match=f"did not finish in {timeout:g} s; it was stopped"):
        launch.run(SLEEPER, 2, [str(folder)], timeout=timeout)
    took = time.monotonic() - start
    assert took < timeout + GRACE, f"stopping took {took - timeout:.1f} s after the timeout"
    assert launch.processes_with(MARK, mark) == [], "a rank outlived the launch"
    return len(list(folder.glob("started-*"))), took


def _sweep(tmp_path: Path, mark: str) -> list[int]:
    """Timeouts from 'before the launcher is up' to 'every rank has started' (on any speed)."""
    started, timeout = [], 0.05
    while timeout < 120:
        folder = tmp_path / f"t{timeout:g}"
        folder.mkdir()
        n, _ = _stop_after(timeout, folder, mark)
        started.append(n)
        if n == 2:
            break
        timeout *= 3
    assert started[0] == 0, f"ranks started within 0.05 s: {started}"
    assert started[-1] == 2, f"ranks never all started: {started}"
    return started


def test_timeout_before_during_and_after_rank_start_stops_every_rank(tmp_path, mark):
    print("ranks started at each timeout:", _sweep(tmp_path, mark))


def test_the_same_under_load(tmp_path, busy_cores, mark):
    print("ranks started at each timeout:", _sweep(tmp_path, mark))


def test_ctrl_c_after_the_ranks_started_stops_every_rank(tmp_path, mark):
    def interrupt_when_started():
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_when_started, daemon=True)
    thread.start()
    with pytest.raises(LabkitError, match="was interrupted; every rank was stopped"):
        launch.run(SLEEPER, 2, [str(tmp_path)], timeout=300)
    thread.join(timeout=5)
    assert len(list(tmp_path.glob("started-*"))) == 2
    assert launch.processes_with(MARK, mark) == []


def test_any_other_exception_also_stops_every_rank(tmp_path, mark, monkeypatch):
    """E.g. pytest-timeout's own failure raised while the launcher waits."""
    import subprocess

    real = subprocess.Popen.communicate

    def boom(self, *args, **kwargs):
        if kwargs.get("timeout") == 300:
            deadline = time.monotonic() + 120
            while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("the test's own timeout")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "communicate", boom)
    with pytest.raises(RuntimeError, match="own timeout"):
        launch.run(SLEEPER, 2, [str(tmp_path)], timeout=300)
    assert launch.processes_with(MARK, mark) == []


def test_the_error_names_a_rank_that_aborted_in_cpp():
    """A rank that dies in C++ (gloo throws, std::terminate, SIGABRT) leaves no Python 'Error:'
    line; its ``what():`` line says why, not torchrun's 'Signal 6 (SIGABRT) received' summary."""
    err = (
        "terminate called after throwing an instance of 'gloo::IoException'\n"
        "  what():  [gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:4242\n"
        "traceback : Signal 6 (SIGABRT) received by PID 11316\n"
    )
    assert launch._last_line(err).startswith("what():  [gloo/transport/tcp/pair.cc:598] Connection")
    python = "Traceback (most recent call last):\nValueError: bad size\nexit 1\n"
    assert launch._last_line(python) == "ValueError: bad size"
    assert launch._last_line("") == "(no output)"


def test_exit_worker_flushes_and_exits_with_its_code():
    """A worker leaves with os._exit (no interpreter teardown), its output flushed first."""
    import subprocess
    import sys

    code = (
        "from labkit.distributed.launch import exit_worker; print('done', end=''); exit_worker(3)"
    )
    env = {**os.environ, "PYTHONPATH": str(launch.REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert (out.returncode, out.stdout) == (3, "done")
    assert launch._last_line("Fatal Python error: PyGILState_Release\n") == (
        "Fatal Python error: PyGILState_Release"
    )
