"""labkit: the tested, reusable code behind the course notebooks.

Subpackages by course topic, in layers from top to bottom (``|``: siblings that do not import
each other; docs/architecture.md maps every module): ``course`` (runs notebooks, exercises,
slides, the bundle); ``studies`` | ``fit``; ``training`` | ``distributed`` | ``inference``;
``tuners``; ``memory`` | ``quant``; ``data``; ``models`` (``models.zoo``: the offline model zoo);
then the modules ``hardware`` | ``cli`` | ``dtypes`` and ``checks`` | ``compat`` | ``files``. A
module imports only from layers below its own (``lint-imports``). Import the module you need
(``from labkit.memory import estimator``); nothing heavy is imported here.
"""

from collections.abc import Iterable
from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


class LabkitError(ValueError):
    """Bad input from a learner: the message is one line saying what was wrong and what is accepted."""


def unknown(what: str, got: object, accepted: Iterable[object]) -> LabkitError:
    """The one spelling of "unknown WHAT 'got'; accepted: a, b, c" (raise what it returns)."""
    return LabkitError(f"unknown {what} {got!r}; accepted: {', '.join(map(str, accepted))}")
