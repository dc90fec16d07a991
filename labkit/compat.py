"""Every place labkit relies on another library's private internals, one small function each.

A library may rename or remove a private name in any release. Kept here, each such reliance is
one function with a test in ``tests/test_compat.py`` that fails with a message naming the
library, the internal and the function to update. Nothing else in labkit touches them (ruff's
SLF001 is on for the whole package).
"""

from __future__ import annotations

import logging

# --- optuna ------------------------------------------------------------------------------------

#: The logger of Optuna's private ``optuna.study._optimize`` module: ``Study.optimize`` writes
#: "Trial N failed with parameters ..." (with the traceback) to it.
OPTUNA_TRIAL_FAILURE_LOGGER = "optuna.study._optimize"


def optuna_trial_failure_logger() -> logging.Logger:
    """The logger Optuna writes a failed trial's warning and traceback to (a private module's
    logger: ``labkit tune`` filters the traceback of a Ctrl-C out of it)."""
    return logging.getLogger(OPTUNA_TRIAL_FAILURE_LOGGER)
