"""labkit.compat: each private internal of another library that labkit relies on is still there
and behaves as labkit expects; a failure names the library, the internal and the function."""

import inspect

import IPython
import pytest
from IPython.core.interactiveshell import InteractiveShell

from labkit import compat

# --- IPython -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell_class", ["IPython", "ipykernel"])
def test_showtraceback_takes_etype_evalue_and_lines(shell_class):
    if shell_class == "IPython":
        cls, version = InteractiveShell, IPython.__version__
    else:
        import ipykernel
        from ipykernel.zmqshell import ZMQInteractiveShell

        cls, version = ZMQInteractiveShell, ipykernel.__version__
    method = getattr(cls, "_showtraceback", None)
    assert callable(method), (
        f"{shell_class} {version}: {cls.__name__}._showtraceback is gone; "
        "update labkit.compat.show_traceback (the NameError hint of labkit.course.name_hint)"
    )
    params = list(inspect.signature(method).parameters)
    assert params[:4] == ["self", "etype", "evalue", "stb"], (
        f"{shell_class} {version}: {cls.__name__}._showtraceback{inspect.signature(method)} "
        "changed; update labkit.compat.show_traceback"
    )


def test_show_traceback_shows_the_given_lines_only(capsys):
    shell = InteractiveShell.instance()
    try:
        raise NameError("name 'model' is not defined")
    except NameError as err:
        compat.show_traceback(shell, NameError, err, ["NameError: one line for the learner"])
    out = capsys.readouterr().out
    assert out.strip() == "NameError: one line for the learner", (
        f"IPython {IPython.__version__}: _showtraceback printed {out!r}; "
        "update labkit.compat.show_traceback"
    )


# --- accelerate --------------------------------------------------------------------------------


def test_accelerate_reads_a_config_file_into_torchrun_options(tmp_path):
    import accelerate
    from accelerate.commands import launch as accelerate_launch

    assert callable(getattr(accelerate_launch, "_validate_launch_command", None)), (
        f"accelerate {accelerate.__version__}: commands.launch._validate_launch_command is gone; "
        "update labkit.compat.accelerate_torchrun_args (notebook 15's launch check)"
    )
    config = tmp_path / "two_nodes.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 2\n"
        "num_processes: 16\nmachine_rank: 1\nmain_process_ip: node0\nmain_process_port: 29511\n"
        "mixed_precision: bf16\n"
    )
    options, env = compat.accelerate_torchrun_args(str(config))
    want = {"nnodes": "2", "nproc-per-node": "8", "node-rank": "1", "rdzv-endpoint": "node0:29511"}
    assert {k: options.get(k) for k in want} == want, (
        f"accelerate {accelerate.__version__}: a 2-node file became torchrun options {options}; "
        "update labkit.compat.accelerate_torchrun_args"
    )
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
