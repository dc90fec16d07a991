"""The argument checks that turn bad input into one :class:`labkit.LabkitError` line.

Pure Python, at the bottom of the layers: every layer may import it.
"""

from __future__ import annotations

import math
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


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    above: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a ``float`` if it is a real number (a numpy number too) that is not NaN,
    finite unless ``finite=False``, at least ``low`` and more than ``above`` when given; else a
    one-line error naming ``name`` and what is accepted. Bools and strings are refused."""
    parts = ["a finite number" if finite else "a number (not NaN)"]
    parts += [f">= {low:g}"] if low is not None else []
    parts += [f"> {above:g}"] if above is not None else []
    accepted = " ".join(parts)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LabkitError(f"{name} must be {accepted}, got {value!r}")
    v = float(value)
    if (
        math.isnan(v)
        or (finite and math.isinf(v))
        or (low is not None and v < low)
        or (above is not None and v <= above)
    ):
        raise LabkitError(f"{name} must be {accepted}, got {value!r}")
    return v


def boolean(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` if it is True or False (a numpy bool too), else one line: a string
    such as ``"no"`` is truthy and would silently mean True."""
    kind = type(value)
    if kind is bool or (kind.__module__ == "numpy" and kind.__name__ in {"bool", "bool_"}):
        return bool(value)
    raise LabkitError(f"{name} must be True or False, got {value!r}")


def strings(name: str, value: Any) -> list[str]:
    """``value`` as a list of ``str`` if it is a list (or tuple, or other sequence) of strings,
    else one line: a single string would be read character by character."""
    if isinstance(value, str | bytes):
        raise LabkitError(
            f"{name} is one string, which would be read character by character; accepted: a "
            "list of strings (wrap it: [text])"
        )
    if not isinstance(value, Iterable):
        raise LabkitError(f"{name} must be a list of strings, got {value!r}")
    value = list(value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise LabkitError(
                f"{name}[{i}] is {type(item).__name__} ({item!r:.40}), not a string; accepted: "
                "a list of strings"
            )
    return value
