"""The planner: the cheapest set of levers that makes a training job's predicted peak
(:func:`labkit.memory.peak.training_peak`) fit a card of G GiB. The engine behind
``estimate MODEL --fit GIB --levers auto``.

Each lever of :data:`LEVERS` is a set of options of the peak; its cost (:data:`COSTS`) is the
extra time per step it costs, a fraction of the step without it (recorded; notebook 18 measures
it with :func:`labkit.memory.lever_runs.seconds_per_step` and may pass its own figures). The planner tries every combination of the levers the job can take (at most
2^8 peak predictions, instant for the formula families), keeps those that fit, and returns the
one with the smallest summed cost; among equal costs the one that changes the training least
(levers that keep the step exact first), then the fewest levers. Costs add up as a model of the
time, not a measurement of the combination.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from labkit import LabkitError
from labkit.fit.search import capacity
from labkit.memory import peak

#: Each lever as the options of :func:`labkit.memory.peak.training_peak` it sets (GaLore at rank
#: 128, a choice of this planner: the rank sets the state's size; ``offload_activations`` on a
#: cuda job only).
LEVERS: dict[str, dict[str, Any]] = {
    "chunked_loss": {"loss": "chunked"},
    "checkpointing": {"checkpointing": True},
    "optimizer_in_backward": {"optimizer_in_backward": True},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "adafactor": {"optimizer": "adafactor"},
    "galore": {"galore_rank": 128},
    "pure_bf16": {"precision": "bf16"},
    "offload_activations": {"checkpointing": True, "offload_activations": True},
}
#: Extra time per step of each lever, a fraction of the step without it, recorded from the
#: arithmetic each adds to a large model's step (a CPU timing of the course model is dominated by
#: per-op overhead and, on a shared machine, by its neighbours: notebook 18 measures each lever
#: with ``lever_runs.seconds_per_step`` and may pass its figures as ``costs``). Checkpointing:
#: the blocks' forward again (a step is about 1 forward + 2 backward); the chunked loss: the head
#: again in backward (2·h·V of 6·N flops per token, 2% for Llama-3.1-8B); 8-bit and factored
#: moments, GaLore's projections: a few percent in the optimizer step (GaLore's SVD every 200
#: steps amortised); offload: checkpointing's recompute plus copies partly hidden behind compute.
COSTS: dict[str, float] = {
    "chunked_loss": 0.02,
    "checkpointing": 0.33,
    "optimizer_in_backward": 0.0,
    "adamw8bit": 0.02,
    "adafactor": 0.02,
    "galore": 0.10,
    "pure_bf16": 0.0,
    "offload_activations": 0.40,
}
#: Levers whose step is the step without them (within float rounding); the others change the
#: training (8-bit or factored moments, a low-rank projection, bf16 weights).
EXACT = frozenset({"chunked_loss", "checkpointing", "optimizer_in_backward", "offload_activations"})


@dataclass(frozen=True)
class Plan:
    """The levers chosen (``levers``, cheapest first), the predicted ``peak`` (bytes) with them,
    the summed ``cost`` (fraction of a step), the ``options`` of the peak they set, and the
    ``baseline`` peak of the job without them."""

    levers: tuple[str, ...]
    peak: int
    cost: float
    options: dict[str, Any]
    baseline: int


def _combined(names: tuple[str, ...]) -> dict[str, Any] | None:
    """The options of ``names`` together, or None when two set the same option differently."""
    out: dict[str, Any] = {}
    for name in names:
        for key, value in LEVERS[name].items():
            if key in out and out[key] != value:
                return None
            out[key] = value
    return out


def _candidates(job: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """The levers that change something in ``job`` (one already on is no candidate)."""
    return [n for n in allowed if any(job.get(k) != v for k, v in LEVERS[n].items())]


def _check(allowed: Any, costs: dict[str, float]) -> tuple[str, ...]:
    if allowed == "auto" or allowed is None:
        return tuple(LEVERS)
    names = tuple(allowed.split(",")) if isinstance(allowed, str) else tuple(allowed)
    bad = [n for n in names if n not in LEVERS]
    if bad or not names:
        raise LabkitError(
            f"unknown lever {bad[0] if bad else ''!r}; accepted: auto or a comma list of "
            + ", ".join(LEVERS)
        )
    missing = [n for n in names if n not in costs]
    if missing:
        raise LabkitError(f"no time cost for lever {missing[0]!r}; give one in costs")
    return names


def _order(names: tuple[str, ...], costs: dict[str, float]) -> tuple[float, int, int]:
    return (
        round(sum(costs[n] for n in names), 9),
        sum(n not in EXACT for n in names),
        len(names),
    )


def plan(
    config: Any,
    gib: float,
    *,
    levers: Any = "auto",
    costs: dict[str, float] | None = None,
    reserve: int = 0,
    **options: Any,
) -> Plan:
    """The cheapest set of levers with which the peak of the job (``options``: those of
    :func:`labkit.memory.peak.training_peak`) fits ``gib`` GiB less ``reserve`` bytes.
    ``levers``: ``"auto"`` (all of :data:`LEVERS`) or the names allowed; ``costs``: each lever's
    time cost (default :data:`COSTS`). One line of error when no set fits."""
    costs = {**COSTS, **(costs or {})}
    allowed = _check(levers, costs)
    room = capacity(gib, reserve)
    baseline = peak.training_peak(config, **options).peak
    names = _candidates(options, allowed)
    combos = sorted(
        (c for r in range(len(names) + 1) for c in itertools.combinations(names, r)),
        key=lambda c: _order(c, costs),
    )
    smallest = baseline
    for combo in combos:
        extra = _combined(combo)
        if extra is None:
            continue
        try:
            got = peak.training_peak(config, **{**options, **extra}).peak
        except LabkitError:
            continue  # a combination the job cannot take (GaLore with 8-bit states, ...)
        smallest = min(smallest, got)
        if got <= room:
            chosen = tuple(sorted(combo, key=lambda n: (costs[n], n)))
            return Plan(chosen, got, sum(costs[n] for n in combo), extra, baseline)
    raise LabkitError(
        f"nothing fits {gib:g} GiB: the smallest predicted peak with the levers "
        f"({', '.join(names) or 'none left to add'}) is {smallest / 2**30:.2f} GiB; try a "
        "smaller --batch or --seq, LoRA or QLoRA, or more GPUs"
    )
