"""labkit.compat: each private internal labkit relies on still exists and still does what it is
used for. A failure names the library, the internal and the function to update."""

import logging

import optuna

from labkit import compat


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
    assert with_traceback and "Trial 0 failed" in with_traceback[0].getMessage(), (
        f"optuna {optuna.__version__} no longer logs a failed trial's traceback through the "
        f"{compat.OPTUNA_TRIAL_FAILURE_LOGGER!r} logger: update "
        "labkit.compat.optuna_trial_failure_logger (labkit tune's Ctrl-C would print a traceback)"
    )
