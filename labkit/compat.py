"""Every private internal of another library that labkit relies on, one small function each.

A library may rename or remove a private name in any release. Kept here, each such reliance is
one function with a test in ``tests/test_compat.py`` that fails with a message naming the
library, its version, the internal and the function to update. Nothing else in labkit touches
them (ruff's SLF001 is on for the whole package). Each function imports its library itself, so
importing this module costs nothing and needs none of them. Keep it a flat list of small
functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any


# --- torch -------------------------------------------------------------------------------------
def storage_id(storage: Any) -> int:
    """The identity of a storage's StorageImpl (``UntypedStorage._cdata``): views of one tensor
    share it, as they share an address. A fake tensor's storage has no address (its
    ``data_ptr()`` is 0 for all), so this is the only way to tell its storages apart."""
    return storage._cdata  # noqa: SLF001 - no public identity of a StorageImpl


@contextlib.contextmanager
def grouped_mm_any_dtype() -> Iterator[None]:
    """torch's fake (meta) kernel of ``_grouped_mm`` (MoE experts in transformers 5) accepts bf16
    only, as the CUDA kernel does; the CPU kernel also runs fp32 and fp16. While active, the meta
    kernel returns the same output shape for equal fp32/fp16 inputs too.

    Patches ``torch._meta_registrations._meta_grouped_mm_common`` (the module global the
    ``_grouped_mm`` meta registration calls) and calls ``_create_grouped_mm_output_tensor``."""
    import torch
    from torch import _meta_registrations as meta

    original = meta._meta_grouped_mm_common  # noqa: SLF001

    # the signature of torch 2.13's _meta_grouped_mm_common (tests/test_compat.py checks it)
    def common(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, **kw):
        if scale_a is None and mat_a.dtype == mat_b.dtype != torch.bfloat16:
            return meta._create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)  # noqa: SLF001
        return original(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, **kw)

    meta._meta_grouped_mm_common = common  # noqa: SLF001
    try:
        yield
    finally:
        meta._meta_grouped_mm_common = original  # noqa: SLF001


@contextlib.contextmanager
def on_checkpoint_recompute(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` each time a (reentrant) checkpointed segment starts its backward, i.e.
    just before it recomputes its forward. Replaces ``torch.utils.checkpoint.CheckpointFunction``'s
    ``backward`` (an internal autograd Function; process-global while active, not thread-safe).
    Only reentrant checkpointing goes through it: the non-reentrant variant stores its tensors
    through saved-tensor hooks of its own, which hide them from the caller's hooks."""
    import torch.utils.checkpoint

    function = torch.utils.checkpoint.CheckpointFunction
    original = vars(function)["backward"]  # the staticmethod itself, restored as it was
    call = function.backward

    def backward(ctx, *grads):
        callback()
        return call(ctx, *grads)

    function.backward = staticmethod(backward)
    try:
        yield
    finally:
        function.backward = original


# --- transformers ------------------------------------------------------------------------------
@contextlib.contextmanager
def no_packed_sequences() -> Iterator[None]:
    """Tell transformers' mask builder that the batch holds no packed sequences.

    Without a cache, transformers looks for packed sequences in the position ids (a jump in
    them); on fake tensors it cannot read them and assumes packing, building a b·s² mask a real
    step does not have. Replaces ``transformers.masking_utils.find_packed_sequence_indices``,
    which works while the mask code looks it up as a module global (a global side effect while
    active)."""
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


# --- IPython -----------------------------------------------------------------------------------


def show_traceback(shell: Any, etype: type, value: BaseException, lines: list[str]) -> None:
    """Show ``lines`` as the running cell's error, in place of the traceback.

    IPython's ``InteractiveShell._showtraceback(etype, evalue, stb)`` is what a custom exception
    handler (``set_custom_exc``) must call to show its own lines; ipykernel overrides it to send
    them as the cell's error output. IPython has no public call for it.
    """
    shell._showtraceback(etype, value, lines)  # noqa: SLF001 - no public way to show given lines


# --- optuna ------------------------------------------------------------------------------------

#: The logger of Optuna's private ``optuna.study._optimize`` module: ``Study.optimize`` writes
#: "Trial N failed with parameters ..." (with the traceback) to it.
OPTUNA_TRIAL_FAILURE_LOGGER = "optuna.study._optimize"


def optuna_trial_failure_logger() -> logging.Logger:
    """The logger Optuna writes a failed trial's warning and traceback to (a private module's
    logger: ``labkit tune`` filters the traceback of a Ctrl-C out of it)."""
    return logging.getLogger(OPTUNA_TRIAL_FAILURE_LOGGER)


# --- nbclient ----------------------------------------------------------------------------------


def nbclient_signalled(client: Any) -> bool:
    """Whether a SIGINT (Ctrl-C) or SIGTERM reached a ``NotebookClient`` while it ran.

    During ``execute`` nbclient replaces Python's SIGINT handler with its own, which only shuts
    the kernel down (the cell then fails with an unrelated error) and sets
    ``_async_cleanup_kernel_future``; nothing public says a signal came. The course runner
    asks here so that Ctrl-C stops the run instead of going on to the next notebook.
    """
    return getattr(client, "_async_cleanup_kernel_future", None) is not None


# --- accelerate --------------------------------------------------------------------------------


def accelerate_torchrun_args(config_file: str, script: str = "train.py") -> tuple[dict, dict]:
    """What ``accelerate launch --config_file FILE SCRIPT`` hands torchrun: ``(options, env)``.

    ``options`` maps torchrun's options (``nnodes``, ``nproc-per-node``, ``node-rank``,
    ``master-port``, ``rdzv-endpoint``...) to their values; ``env`` holds the ``ACCELERATE_*`` and
    ``FSDP_*`` variables through which the file's settings reach ``Accelerator()`` in each
    process. accelerate reads the file into its launch arguments in the private
    ``accelerate.commands.launch._validate_launch_command``; ``prepare_multi_gpu_env`` (public)
    then sets torchrun's arguments. Nothing is started.
    """
    from accelerate.commands.launch import (
        _validate_launch_command,  # noqa: PLC2701 - accelerate reads the config file only here
        launch_command_parser,
    )
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), script])
    args = _validate_launch_command(args)[0]
    env = prepare_multi_gpu_env(args)
    keys = ("nnodes", "nproc_per_node", "node_rank", "master_addr", "master_port", "rdzv_endpoint")
    options = {
        k.replace("_", "-"): str(getattr(args, k))
        for k in keys
        if getattr(args, k, None) is not None
    }
    return options, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
