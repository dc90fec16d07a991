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
