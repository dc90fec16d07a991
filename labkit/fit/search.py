"""The inverse question: the largest micro-batch (at a given sequence length) and the longest
sequence (at a given micro-batch) whose predicted peak (:func:`labkit.memory.peak.training_peak`)
fits a card of G GiB. The engine behind ``estimate MODEL --fit GIB``.

The peak grows with batch and with sequence length, so a doubling search brackets the answer
and a bisection finds it: about 2·log2(answer) peak predictions (instant for the formula
families, a few seconds each for a dry run). Nothing is subtracted for what a GPU adds (CUDA
context, allocator reserve; :func:`labkit.memory.peak.gpu_overheads`): pass ``reserve`` to keep
bytes aside for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from labkit import LabkitError
from labkit.memory import peak
from labkit.models import architecture

#: The largest batch the search tries (a bound, not a limit of any card).
MAX_BATCH = 1 << 16


def capacity(gib: float, reserve: int) -> int:
    """Bytes of a card of ``gib`` GiB less ``reserve`` (checked: one line when wrong)."""
    if isinstance(gib, bool) or not isinstance(gib, int | float) or not 0 < gib < math.inf:
        raise LabkitError(f"card memory must be a number of GiB > 0, got {gib!r}; e.g. 24")
    if not isinstance(reserve, int) or reserve < 0:
        raise LabkitError(f"reserve must be a whole number of bytes >= 0, got {reserve!r}")
    return int(gib * 2**30) - reserve


def _largest(fits: Callable[[int], bool], top: int) -> int | None:
    """The largest n in 1..top with ``fits(n)`` (``fits`` true up to some n, false above)."""
    if not fits(1):
        return None
    lo, hi = 1, 2
    while hi <= top and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, top + 1)  # fits(lo), not fits(hi) (or hi beyond the top)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_seq_len(config: Any) -> int:
    """The longest sequence the model can take: GPT-2's learned positions, else the config's
    ``max_position_embeddings`` (RoPE models run past it, but that is what they were trained
    for), else 2^20."""
    c = architecture.transformers_config(config).get_text_config()
    for key in ("n_positions", "max_position_embeddings", "seq_length"):
        value = getattr(c, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 20


def max_batch(
    config: Any, gib: float, *, seq: int = 512, reserve: int = 0, **options: Any
) -> int | None:
    """The largest micro-batch whose peak at ``seq`` tokens fits ``gib`` GiB (less ``reserve``
    bytes); None when not even one sequence fits. ``options``: those of
    :func:`labkit.memory.peak.training_peak` (method, precision, optimizer, impl, ...)."""
    room = capacity(gib, reserve)

    def fits(b: int) -> bool:
        return peak.training_peak(config, batch=b, seq=seq, **options).peak <= room

    return _largest(fits, MAX_BATCH)


def max_seq(
    config: Any, gib: float, *, batch: int = 1, reserve: int = 0, **options: Any
) -> int | None:
    """The longest sequence whose peak at micro-batch ``batch`` fits ``gib`` GiB (less
    ``reserve`` bytes), at most :func:`max_seq_len`; None when not even one token fits."""
    room = capacity(gib, reserve)

    def fits(s: int) -> bool:
        return peak.training_peak(config, batch=batch, seq=s, **options).peak <= room

    return _largest(fits, max_seq_len(config))


def fit(
    config: Any, gib: float, *, batch: int = 1, seq: int = 512, reserve: int = 0, **options: Any
) -> dict[str, int | None]:
    """``{"max_batch": ..., "max_seq": ...}``: :func:`max_batch` at ``seq`` and :func:`max_seq`
    at ``batch`` (what ``estimate --fit`` reports)."""
    return {
        "max_batch": max_batch(config, gib, seq=seq, reserve=reserve, **options),
        "max_seq": max_seq(config, gib, batch=batch, reserve=reserve, **options),
    }
