"""Launch a multi-process PyTorch job from a notebook and read back one JSON report per rank.

``run("labkit.parallel", nproc=2, args=[...])`` starts ``torchrun`` (``python -m
torch.distributed.run``) on a free localhost port, waits with a timeout, kills the whole process
group if it hangs, and returns each rank's report (a dict the worker wrote with
:func:`write_report`). A failed run raises one :class:`LabkitError` line with the exit code and the
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
from dataclasses import dataclass
from pathlib import Path

from labkit import REPO_ROOT, LabkitError
from labkit.units import positive

#: Environment variable through which the launcher tells each rank where to write its report.
REPORT_DIR_ENV = "LABKIT_REPORT_DIR"


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
        raise LabkitError(f"{REPORT_DIR_ENV} is not set; start workers with labkit.launch.run")
    Path(folder, f"rank{rank}.json").write_text(json.dumps(report))


def _stop(proc: subprocess.Popen) -> None:
    """Kill the launcher and every rank (they share one process group) and reap them."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _last_line(text: str) -> str:
    """The line that says what went wrong: the last exception line, else the last line."""
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and set(ln.strip()) != {"="} and "torch.distributed.elastic" not in ln
    ]
    errors = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    return (errors or lines or ["(no output)"])[-1]


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
    rendezvous port. A timeout, a failed rank or Ctrl-C stops every rank (the whole process
    group) before the one-line error is raised, so nothing is left running.
    """
    if timeout <= 0:
        raise LabkitError(f"timeout must be positive seconds, got {timeout!r}")
    if port is not None and port_in_use(port):
        raise LabkitError(
            f"port {port} is in use on localhost; accepted: a free port, or None to pick one"
        )
    command = torchrun_command(module, nproc, list(args or []), port or free_port())
    with tempfile.TemporaryDirectory(prefix="labkit-launch-") as folder:
        env = {
            **os.environ,
            REPORT_DIR_ENV: folder,
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
            start_new_session=True,  # its own process group: a timeout kills every rank
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise LabkitError(
                f"{module} on {nproc} processes did not finish in {timeout:g} s; it was stopped "
                "(raise timeout=, or make the job smaller)"
            ) from None
        except KeyboardInterrupt:
            _stop(proc)
            raise LabkitError(
                f"{module} on {nproc} processes was interrupted; every rank was stopped"
            ) from None
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
                    f"{module}: rank {rank} wrote no report (labkit.launch.write_report)"
                )
            reports.append(json.loads(path.read_text()))
    return Launch(proc.returncode, reports, out, command)
