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
