"""The first call of every notebook: :func:`setup`."""

from __future__ import annotations

import torch

from labkit import hardware
from labkit.course import name_hint


def setup(threads: int | None = None, seed: int = 0) -> torch.device:
    """Quiet logs, threads and seed (:func:`labkit.hardware.setup`), plus the hint a NameError
    gives in a notebook ("run the cells above first"); returns the device."""
    device = hardware.setup(threads, seed)
    name_hint.install()
    return device
