"""labkit: the tested, reusable code behind the course notebooks.

Modules are named after course topics (``zoo``, ``hardware``, ``memory``, ``quant``, ``peft``...).
Import the module you need; nothing heavy is imported here.
"""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


class LabkitError(ValueError):
    """Bad input from a learner: the message is one line saying what was wrong and what is accepted."""
