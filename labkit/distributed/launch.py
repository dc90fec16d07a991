"""Launch a multi-process PyTorch job from a notebook and read back one JSON report per rank.

``run("labkit.distributed.parallel", nproc=2, args=[...])`` starts ``torchrun`` (``python -m
torch.distributed.run``) on a free localhost port, waits with a timeout, stops the launcher and
every rank if it hangs, and returns each rank's report (a dict the worker wrote with
:func:`write_report`).

Stopping every rank needs more than killing torchrun's process group: torch's elastic agent
starts each worker in a session of its own, so a rank outlives ``os.killpg`` on the launcher and
keeps the output pipes open. Every process the launch starts therefore carries a unique
:data:`LAUNCH_ID_ENV` in its environment (children inherit it), and :func:`stop_launch` freezes,
then kills, every process that carries it, whether or not the ranks have started. A failed run raises one :class:`LabkitError` line with the exit code and the
last line the job printed to stderr, never a silent non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psutil

from labkit import REPO_ROOT, LabkitError
from labkit.checks import positive

#: Environment variable through which the launcher tells each rank where to write its report.
REPORT_DIR_ENV = "LABKIT_REPORT_DIR"
#: Environment variable that marks every process of one launch (launcher, ranks, their children).
LAUNCH_ID_ENV = "LABKIT_LAUNCH_ID"


@dataclass(frozen=True)
class Launch:
    """What a finished run gave back: exit code (always 0 here), rank reports, stdout, command."""

    returncode: int
    reports: list[dict]
    stdout: str
    command: list[str]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(module: str, nproc: int, args: list[str], port: int) -> list[str]:
    """The ``torchrun`` command line for ``nproc`` local processes running ``python -m module``."""
    positive("nproc", nproc)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        module,
        *args,
    ]


def write_report(report: dict, rank: int) -> None:
    """Inside a worker: write this rank's report where the launcher will read it."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        raise LabkitError(
            f"{REPORT_DIR_ENV} is not set; start workers with labkit.distributed.launch.run"
        )
    Path(folder, f"rank{rank}.json").write_text(json.dumps(report))


def processes_with(name: str, value: str) -> list[psutil.Process]:
    """Every live process whose environment has ``name=value`` (zombies and others' aside)."""
    found = []
    for candidate in psutil.process_iter():
        try:
            if candidate.environ().get(name) == value and candidate.status() != "zombie":
                found.append(candidate)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def stop_launch(launch_id: str, within: float = 10.0) -> None:
    """Freeze, then kill, every process of one launch until none is left (or ``within`` s).

    A frozen process cannot start another, so the set stops growing; a rank that was forking
    when it was frozen shows up in the next pass and is frozen in turn.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = processes_with(LAUNCH_ID_ENV, launch_id)
        if not alive:
            return
        for victim in alive:
            try:
                victim.suspend()
            except psutil.Error:
                pass
        for victim in alive:
            try:
                victim.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=1)


def _stop(proc: subprocess.Popen, launch_id: str) -> None:
    """Kill the launcher and every rank of this launch, reap the launcher, close its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    stop_launch(launch_id)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # a pipe still open: never wait for ever
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait(timeout=10)


def _last_line(text: str) -> str:
    """The line that says what went wrong: the last exception line (a Python one, or a C++ one's
    ``what():`` line, e.g. gloo's before a rank aborts with SIGABRT), else the last line."""
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and set(ln.strip()) != {"="} and "torch.distributed.elastic" not in ln
    ]
    keys = ("Error:", "Exception:", "what():", "Fatal Python error")
    errors = [ln for ln in lines if any(k in ln for k in keys)]
    return (errors or lines or ["(no output)"])[-1]


def exit_worker(code: int = 0) -> NoReturn:
    """End a torchrun worker now, without the interpreter's teardown (stdout and stderr flushed).

    After the report is written and the process group destroyed, gloo's threads can still hold
    tensors; freeing them while the interpreter shuts down aborts the rank now and then (SIGABRT,
    seen twice in CI on two-rank CPU jobs). Skipping the teardown skips that; nothing is left to
    clean up by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def port_in_use(port: int) -> bool:
    """True if something on localhost already listens on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(
    module: str,
    nproc: int = 2,
    args: list[str] | None = None,
    timeout: float = 120.0,
    port: int | None = None,
) -> Launch:
    """Run ``python -m module *args`` on ``nproc`` local processes; return every rank's report.

    One thread per process (``OMP_NUM_THREADS=1``) so N ranks do not fight over the cores;
    ``HF_HUB_OFFLINE=1`` so nothing waits on the network. ``port`` (default: a free one) is the
    rendezvous port. A timeout, a failed rank, Ctrl-C or any other exception stops the launcher
    and every rank (started or not) before the error is raised, so nothing is left running.
    """
    if timeout <= 0:
        raise LabkitError(f"timeout must be positive seconds, got {timeout!r}")
    if port is not None and port_in_use(port):
        raise LabkitError(
            f"port {port} is in use on localhost; accepted: a free port, or None to pick one"
        )
    command = torchrun_command(module, nproc, list(args or []), port or free_port())
    launch_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="labkit-launch-") as folder:
        env = {
            **os.environ,
            REPORT_DIR_ENV: folder,
            LAUNCH_ID_ENV: launch_id,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,  # Ctrl-C in a notebook reaches us, not torchrun directly
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, launch_id)
            raise LabkitError(
                f"{module} on {nproc} processes did not finish in {timeout:g} s; it was stopped "
                "(raise timeout=, or make the job smaller)"
            ) from None
        except KeyboardInterrupt:
            _stop(proc, launch_id)
            raise LabkitError(
                f"{module} on {nproc} processes was interrupted; every rank was stopped"
            ) from None
        except BaseException:  # e.g. a test's own timeout: stop every rank, then re-raise
            _stop(proc, launch_id)
            raise
        stop_launch(launch_id)  # a rank torchrun failed to reap must not outlive the job
        if proc.returncode != 0:
            raise LabkitError(
                f"{module} on {nproc} processes exited with code {proc.returncode}: "
                f"{_last_line(err)}"
            )
        reports = []
        for rank in range(nproc):
            path = Path(folder, f"rank{rank}.json")
            if not path.exists():
                raise LabkitError(
                    f"{module}: rank {rank} wrote no report (labkit.distributed.launch.write_report)"
                )
            reports.append(json.loads(path.read_text()))
    return Launch(proc.returncode, reports, out, command)
