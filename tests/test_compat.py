"""labkit.compat: each private internal of another library that labkit relies on is still there
and behaves as labkit expects; a failure names the library, its version, the internal and the
function to update (or says the patch is no longer needed)."""

import inspect
import logging

import IPython
import optuna
import pytest
import torch
import transformers
from IPython.core.interactiveshell import InteractiveShell
from torch._subclasses.fake_tensor import FakeTensorMode

from labkit import compat

# --- torch and transformers --------------------------------------------------------------------


def changed(library: str, version: str, internal: str, what: str) -> str:
    return f"{library} {version} changed {internal}: {what}; update labkit.compat"


def test_storage_id_tells_fake_storages_apart_and_views_share_it():
    with FakeTensorMode():
        a, b = torch.empty(4, 4), torch.empty(4, 4)  # no addresses: data_ptr() is 0
        view = a[1:].t()
        ids = [compat.storage_id(t.untyped_storage()) for t in (a, b, view)]
    assert all(isinstance(i, int) for i in ids), changed(
        "torch", torch.__version__, "UntypedStorage._cdata", "no longer an int"
    )
    assert ids[0] != ids[1] and ids[0] == ids[2], changed(
        "torch", torch.__version__, "UntypedStorage._cdata", "no longer one id per StorageImpl"
    )


GROUPED_MM_PARAMETERS = [
    "mat_a",
    "mat_b",
    "scale_a",
    "scale_b",
    "offs",
    "bias",
    "scale_result",
    "out_dtype",
    "use_fast_accum",
]


def _grouped_mm_fp32():
    with FakeTensorMode():
        a, b = torch.empty(8, 16), torch.empty(2, 16, 4)
        offs = torch.empty(2, dtype=torch.int32)
        return torch._grouped_mm(a, b, offs=offs)


def test_grouped_mm_meta_kernel_takes_fp32_only_while_patched():
    from torch import _meta_registrations as meta

    names = list(inspect.signature(meta._meta_grouped_mm_common).parameters)
    assert names == GROUPED_MM_PARAMETERS, changed(
        "torch", torch.__version__, "_meta_registrations._meta_grouped_mm_common", f"{names}"
    )
    assert hasattr(meta, "_create_grouped_mm_output_tensor"), changed(
        "torch", torch.__version__, "_meta_registrations", "no _create_grouped_mm_output_tensor"
    )
    try:
        _grouped_mm_fp32()
    except RuntimeError:
        pass
    else:
        pytest.fail(
            changed(
                "torch",
                torch.__version__,
                "the _grouped_mm meta kernel",
                "it now takes fp32: compat.grouped_mm_any_dtype can go",
            )
        )
    with compat.grouped_mm_any_dtype():
        out = _grouped_mm_fp32()
    assert (tuple(out.shape), out.dtype) == ((8, 4), torch.float32)
    assert meta._meta_grouped_mm_common.__name__ == "_meta_grouped_mm_common"  # restored


def test_on_checkpoint_recompute_is_called_once_per_segment():
    from torch.utils.checkpoint import CheckpointFunction, checkpoint

    assert isinstance(inspect.getattr_static(CheckpointFunction, "backward"), staticmethod), (
        changed("torch", torch.__version__, "utils.checkpoint.CheckpointFunction", "no backward")
    )
    calls = []
    x = torch.ones(3, requires_grad=True)
    with compat.on_checkpoint_recompute(lambda: calls.append(1)):
        y = checkpoint(torch.sin, x, use_reentrant=True)
        y = checkpoint(torch.cos, y, use_reentrant=True)
        y.sum().backward()
    assert len(calls) == 2, changed(
        "torch",
        torch.__version__,
        "reentrant checkpointing",
        f"CheckpointFunction.backward ran {len(calls)} times for 2 segments",
    )
    checkpoint(torch.sin, x, use_reentrant=True).sum().backward()
    assert len(calls) == 2  # restored, as the staticmethod it was
    assert isinstance(inspect.getattr_static(CheckpointFunction, "backward"), staticmethod)


def test_no_packed_sequences_reaches_transformers_mask_code():
    from transformers import masking_utils

    version = transformers.__version__
    name = "masking_utils.find_packed_sequence_indices"
    assert list(inspect.signature(masking_utils.find_packed_sequence_indices).parameters) == [
        "position_ids"
    ], changed("transformers", version, name, "its signature")
    # the mask code must look it up as a module global, or replacing it changes nothing
    users = [
        f
        for f in vars(masking_utils).values()
        if inspect.isfunction(f) and "find_packed_sequence_indices" in f.__code__.co_names
    ]
    assert users, changed("transformers", version, name, "no function calls it as a global")
    packed = torch.tensor([[0, 1, 2, 0, 1, 2]])
    assert masking_utils.find_packed_sequence_indices(packed) is not None
    with compat.no_packed_sequences():
        assert masking_utils.find_packed_sequence_indices(packed) is None
    assert masking_utils.find_packed_sequence_indices(packed) is not None  # restored


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


# --- optuna ------------------------------------------------------------------------------------
def test_optuna_logs_a_failed_trial_through_the_logger_labkit_filters():
    seen: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return False  # keep the test's output clean

    def fails(trial):
        raise ZeroDivisionError("on purpose")

    logger, keep = compat.optuna_trial_failure_logger(), Keep()
    logger.addFilter(keep)
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study().optimize(fails, n_trials=1, catch=(ZeroDivisionError,))
    finally:
        logger.removeFilter(keep)
    with_traceback = [r for r in seen if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert with_traceback and "Trial 0 failed" in with_traceback[0].getMessage(), changed(
        "optuna",
        optuna.__version__,
        f"the {compat.OPTUNA_TRIAL_FAILURE_LOGGER!r} logger",
        "a failed trial's traceback no longer goes through it (labkit tune's Ctrl-C would print "
        "one); compat.optuna_trial_failure_logger",
    )


# --- nbclient ----------------------------------------------------------------------------------


def test_nbclient_notes_a_signal_in_its_cleanup_future():
    import nbclient
    import nbformat
    from nbclient import NotebookClient

    source = inspect.getsource(NotebookClient.async_setup_kernel)
    assert "add_signal_handler(signal.SIGINT" in source and (
        "self._async_cleanup_kernel_future =" in source
    ), (
        f"nbclient {nbclient.__version__}: NotebookClient.async_setup_kernel no longer sets "
        "_async_cleanup_kernel_future on SIGINT; update labkit.compat.nbclient_signalled "
        "(Ctrl-C in labkit.course.runner; tests/test_faults.py checks it end to end)"
    )
    assert not compat.nbclient_signalled(NotebookClient(nbformat.v4.new_notebook()))


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
