"""Hardware and environment helpers: device choice, threads, bf16, bitsandbytes, CUDA guards.

Every notebook starts with :func:`setup` (quiet logs, thread count, device) and prints
:func:`env_report`, so a learner sees which versions and hardware produced the outputs.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import platform
import re
import subprocess
import warnings
from pathlib import Path

import torch

from labkit import REPO_ROOT, LabkitError
from labkit.checks import positive

STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna")
#: Every package version the course is tested with (``make setup`` installs through it).
LOCK_FILE = REPO_ROOT / "constraints.txt"


def pick_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU: the first one that is really usable."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Default: the ``LABKIT_THREADS`` environment variable, else the number of CPUs this process
    may use, capped at 8 (small models gain nothing from more threads, and a shared 2-core machine
    slows down sharply when threads are oversubscribed). Any count, ``LABKIT_THREADS`` included,
    is capped at the CPUs this process may use, with a warning: 1000 threads on 2 cores turn a
    2-second trial into minutes.
    """
    cpus = usable_cpus()
    if n is None:
        env = os.environ.get("LABKIT_THREADS", "").strip()
        if env and not (env.isdigit() and int(env) >= 1):
            raise LabkitError(
                f"LABKIT_THREADS={env!r} is not a thread count; accepted: a whole number >= 1 "
                "(or unset it to use this machine's CPUs, at most 8)"
            )
        n = int(env) if env else min(8, cpus)
    n = positive("thread count", n)
    if n > cpus:
        warnings.warn(
            f"{n} threads asked for, but this process may use {cpus} CPU(s): using {cpus} "
            "(more threads than CPUs only slow torch down)",
            stacklevel=2,
        )
        n = cpus
    torch.set_num_threads(n)
    return n


def usable_cpus() -> int:
    """How many CPUs this process may use (its affinity where the OS tells, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: CPU feature flags that give native bf16 dot products: x86 AVX512-BF16 and AMX-BF16 (Linux
#: ``/proc/cpuinfo`` "flags"), Arm's BF16 extension ("Features": ``bf16``; macOS: FEAT_BF16).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags this CPU reports (from ``cpuinfo``, default ``/proc/cpuinfo``;
    on macOS ``sysctl hw.optional.arm.FEAT_BF16``); empty when it reports none or cannot tell."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        if not cpuinfo and platform.system() == "Darwin":
            try:
                out = subprocess.run(
                    ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                out = ""
            return ["bf16"] if out == "1" else []
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            found |= set(value.split())
    return [f for f in CPU_BF16_FLAGS if f in found]


def bf16_support(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether ``device`` does bf16 math **natively**, and the evidence, as one short phrase.

    CUDA: compute capability >= 8.0 (Ampere and newer; ROCm GPUs too). torch's own
    ``torch.cuda.is_bf16_supported()`` defaults to ``including_emulation=True`` and so also says
    yes on a T4 or V100, where bf16 runs emulated and slowly. CPU: any CPU computes in bf16 (the
    kernels widen to fp32), natively only with AVX512-BF16, AMX-BF16 or Arm BF16. MPS: macOS 14+.
    """
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        if torch.version.hip:
            return True, "ROCm GPU"
        if not torch.cuda.is_available():
            return False, "no CUDA GPU visible"
        major, minor = torch.cuda.get_device_capability(device)
        cc = f"compute capability {major}.{minor}"
        return (True, f"{cc} >= 8.0") if major >= 8 else (False, f"{cc} < 8.0: emulated only")
    if device.type == "mps":
        ok = torch.backends.mps.is_macos_or_newer(14, 0)
        return ok, "MPS on macOS 14+" if ok else "MPS needs macOS 14+ for bf16"
    flags = cpu_bf16_flags()
    if flags:
        return True, "CPU flag " + ", ".join(flags)
    return False, "CPU without AVX512-BF16/AMX/Arm BF16: emulated only (slow)"


def bf16_supported(device: torch.device | str | None = None) -> bool:
    """Whether bf16 math is native on ``device`` (:func:`bf16_support` gives the reason)."""
    return bf16_support(device)[0]


def bnb_gpu_usable() -> tuple[bool, str]:
    """Whether bitsandbytes' CUDA kernels can run here, and why not if they cannot."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to torch (bitsandbytes' GPU kernels need one)"
    try:
        quiet_logs()
        import bitsandbytes  # noqa: F401
    except Exception as err:  # pragma: no cover - depends on the install
        return False, f"bitsandbytes failed to import: {err}"
    return True, "CUDA GPU and bitsandbytes available"


def requires_cuda(what: str) -> bool:
    """Guard for CUDA-only cells: returns True when CUDA is there, else prints why it skipped.

    Use as ``if requires_cuda("paged AdamW"): ...`` so the notebook still runs on a CPU.
    """
    if torch.cuda.is_available():
        return True
    print(f"SKIPPED on this machine: {what} needs a CUDA GPU (torch.cuda.is_available() is False).")
    return False


def quiet_logs() -> None:
    """Hide log lines known to be harmless on this stack (see README troubleshooting).

    Sets transformers' verbosity to *error* (every transformers *log* warning is hidden;
    ``transformers.logging.set_verbosity_warning()`` shows them again; a ``warnings.warn``
    FutureWarning still shows unless filtered below), hides transformers' progress bars
    (``transformers.logging.enable_progress_bar()``), filters the Python warnings listed below
    (``warnings.resetwarnings()`` undoes it) and the bitsandbytes loggers (``setLevel(logging.WARNING)``
    on ``bitsandbytes`` and ``bitsandbytes.cextension`` shows them again),
    and sets ``HF_HUB_DISABLE_TELEMETRY`` and ``TOKENIZERS_PARALLELISM`` when they are unset.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.cextension").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` in every
    # PeftModel(): harmless, and nothing a learner can change. The ``gradient_checkpointing*``
    # names a learner types keep their FutureWarning (use ``activation_checkpointing*``).
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated.*")
    # peft 0.21 passes the prefix as ``past_key_values`` (renamed ``cache`` in transformers 5.24)
    # in every prefix-tuning forward: harmless there. "Both ... are set" fires only where
    # generate() runs a prefix-tuned model, whose answer is then wrong (notebook 10 §6): hidden
    # too, so stored outputs hold no raw warnings; the course decodes prefixes without generate().
    # peft's position-id notice fires on every prompt-learning generate(), faithful or not.
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Both `past_key_values` and `cache` are set.*")
    warnings.filterwarnings("ignore", message=r".*Position ids are not supported for parameter.*")
    warnings.filterwarnings("ignore", message=r".*`torch_dtype` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*MatMul8bitLt: inputs will be cast.*")
    # tqdm.auto without ipywidgets falls back to text bars (what we want) but warns each time.
    warnings.filterwarnings("ignore", message=r"IProgress not found.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars; the Trainer's bar stays
    except ImportError:  # pragma: no cover
        pass


def setup(threads: int | None = None, seed: int = 0) -> torch.device:
    """Quiet logs, threads, seed; returns the device (notebooks call
    :func:`labkit.course.session.setup`, which adds the notebook's NameError hint)."""
    quiet_logs()
    set_threads(threads)
    torch.manual_seed(seed)
    return pick_device()


def versions() -> dict[str, str]:
    """Installed versions of the course stack (``'missing'`` when not installed)."""
    out = {"python": platform.python_version()}
    for name in STACK:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


def _normalize(name: str) -> str:
    """A package name as PyPI compares them (``PyYAML`` == ``pyyaml``, ``a_b`` == ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK_FILE) -> dict[str, str]:
    """``{package: version}`` of the lock file's ``name==version`` lines (names normalized)."""
    pins = {}
    for n, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise LabkitError(f"{lock}:{n}: {line!r} is not a pin; accepted: name==version")
        pins[_normalize(name.strip())] = version.strip()
    return pins


def locked_torch_spec(lock: Path = LOCK_FILE) -> str:
    """The lock's torch requirement (``torch==X.Y.Z``): the one place the torch pin is written."""
    return f"torch=={locked_versions(lock)['torch']}"


def version_drift(lock: Path = LOCK_FILE, skip: tuple[str, ...] = ()) -> list[str]:
    """One line per locked package whose installed version differs (empty: the lock holds).

    The fix: ``python -m pip install -c constraints.txt -e ".[test]"`` (what ``make setup`` runs).
    A build label is not a version (``2.13.0+cpu`` is the lock's ``2.13.0``); ``skip`` names
    packages not to compare.
    """
    lines = []
    for name, want in locked_versions(lock).items():
        if name in skip:
            continue
        try:
            have = f"{md.version(name)} is installed"
        except md.PackageNotFoundError:
            have = "is not installed"
        if have.split(" ", 1)[0].split("+", 1)[0] != want:
            lines.append(f"{name} {have}; the course is tested with {want} ({lock.name})")
    return lines


def env_report() -> str:
    """Versions and hardware as a few readable lines."""
    device = pick_device()
    lines = [" ".join(f"{k} {v}" for k, v in versions().items())]
    hw = f"device {device.type}, torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        hw += f", GPU {props.name} {props.total_memory / 2**30:.1f} GiB"
    native, why = bf16_support(device)
    hw += f", bf16 native: {'yes' if native else 'no'} ({why})"
    ok, why = bnb_gpu_usable()
    hw += f", bitsandbytes GPU path: {'yes' if ok else 'no (' + why + ')'}"
    lines.append(hw)
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    """``python -m labkit env``."""
    set_threads()
    print(env_report())
    return 0
