"""The argument checks that turn bad input into one :class:`labkit.LabkitError` line.

Pure Python, at the bottom of the layers: every layer may import it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import labkit
from labkit import LabkitError


def positive(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is a positive integer (a numpy integer from a sweep too),
    else a one-line error naming ``name``. Bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LabkitError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise LabkitError(f"{name} must be a positive integer, got {int(value)}")
    return int(value)


def choice(what: str, value: Any, accepted: Iterable[Any]) -> Any:
    """``value`` if it is one of ``accepted``, else ``labkit.unknown(what, value, accepted)``."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise labkit.unknown(what, value, accepted)
    return value


#: Seeds the course accepts: what torch, numpy and Optuna all take.
SEED_RANGE = "0..2**32-1"


def seed_value(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer in 0..2**32-1 (a numpy integer too), else a
    one-line error naming ``name``. Bools and floats are refused (1.5 is not seed 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LabkitError(f"{name} must be an integer in {SEED_RANGE}, got {value!r}")
    if not 0 <= value < 2**32:
        raise LabkitError(f"{name} must be an integer in {SEED_RANGE}, got {int(value)}")
    return int(value)


def count(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer >= 0 (a numpy integer too), else a one-line
    error naming ``name``. Bools are refused (True is not 1 row)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise LabkitError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)
