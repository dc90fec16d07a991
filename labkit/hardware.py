"""Hardware and environment helpers: device choice, threads, bf16, bitsandbytes, CUDA guards.

Every notebook starts with :func:`setup` (quiet logs, thread count, device) and prints
:func:`env_report`, so a learner sees which versions and hardware produced the outputs.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import platform
import warnings

import torch

from labkit import LabkitError
from labkit.checks import positive

STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna")


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


def bf16_supported(device: torch.device | str | None = None) -> bool:
    """Whether bf16 math is supported natively on ``device`` (CUDA: compute capability >= 8.0)."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type in {"cpu", "mps"}


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

    Only specific loggers/messages are silenced; real warnings from training still show.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.cextension").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*renamed.*")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated.*")
    # peft 0.21 still passes ``past_key_values`` (renamed ``cache`` in transformers 5.24) and
    # position ids to the base model during prefix tuning: internal, nothing a learner can change
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


def env_report() -> str:
    """Versions and hardware as a few readable lines."""
    device = pick_device()
    lines = [" ".join(f"{k} {v}" for k, v in versions().items())]
    hw = f"device {device.type}, torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        hw += f", GPU {props.name} {props.total_memory / 2**30:.1f} GiB"
    hw += f", bf16 {'yes' if bf16_supported(device) else 'no'}"
    ok, why = bnb_gpu_usable()
    hw += f", bitsandbytes GPU path: {'yes' if ok else 'no (' + why + ')'}"
    lines.append(hw)
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    """``python -m labkit env``."""
    set_threads()
    print(env_report())
    return 0
