"""``python tests/quick_tune.py ARGV``: ``python -m labkit tune ARGV`` around a trivial objective,
so that the tests of the search protocol (resume, several workers, Ctrl-C) run in seconds.

Each trial suggests ``x`` in [0, 1], sleeps ``LABKIT_TEST_TRIAL_SECONDS`` (default 0.05) and
returns ``x``: the study, its workers and its counting are the real ones.
"""

import os
import sys
import time

from labkit import LabkitError


def quick_objective(trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(float(os.environ.get("LABKIT_TEST_TRIAL_SECONDS", "0.05")))
    return x


if __name__ == "__main__":
    from labkit.training.tuning import cli

    try:
        sys.exit(cli.cli_main(sys.argv[1:], objective=quick_objective))
    except LabkitError as err:  # as labkit.cli.main reports it
        print(f"labkit tune: {err}", file=sys.stderr)
        sys.exit(2)
