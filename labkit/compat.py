"""Every private internal of another library that labkit relies on, one small function each.

A library may rename or remove a private name in any release. Kept here, each such reliance is
one function with a test in ``tests/test_compat.py`` that fails with a message naming the
library, the internal and the function to update. Nothing else in labkit touches them (ruff's
SLF001 is on for the whole package). Keep it a flat list of small functions.
"""

from __future__ import annotations

from typing import Any

# --- IPython -----------------------------------------------------------------------------------


def show_traceback(shell: Any, etype: type, value: BaseException, lines: list[str]) -> None:
    """Show ``lines`` as the running cell's error, in place of the traceback.

    IPython's ``InteractiveShell._showtraceback(etype, evalue, stb)`` is what a custom exception
    handler (``set_custom_exc``) must call to show its own lines; ipykernel overrides it to send
    them as the cell's error output. IPython has no public call for it.
    """
    shell._showtraceback(etype, value, lines)  # noqa: SLF001 - no public way to show given lines


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
