"""The planner: the cheapest set of levers that makes a training job's predicted peak
(:func:`labkit.memory.peak.training_peak`) fit a card of G GiB. The engine behind
``estimate MODEL --fit GIB --levers auto``.

Each lever of :data:`LEVERS` is a set of options of the peak; its cost (:data:`COSTS`) is the
extra time per step it costs, a fraction of the step without it. The costs are measured, not
argued: :data:`COSTS` is read from the record ``benchmarks/lever_costs.json``, which
``benchmarks/lever_costs.py`` writes by timing every lever on the course model on a CPU (fp32,
8 x 256 tokens, where matmuls are most of the step; interleaved rounds on the thread's CPU
clock; each lever's cost is its median ratio to the step without it, minus 1, floored at 0).
A lever that cannot run on a CPU (``offload_activations``) carries an argued figure in the
record, marked ``"measured": false``. Re-make the record with
``LABKIT_THREADS=1 .venv/bin/python benchmarks/lever_costs.py`` (a few minutes). A caller may
pass its own figures (``costs``: notebook 18's challenge passes the times it measures).

The planner tries every combination of the levers the job can take (at most 2^9 peak
predictions, instant for the formula families), keeps those that fit, and returns the one that
changes the training least (the fewest levers that do not keep the step exact: 8-bit or
factored moments, GaLore, pure bf16), then the one with the smallest summed time cost, then the
fewest levers. So an exact plan is preferred to a cheaper one that changes the training; pass
``levers=`` to allow only some. ``pure_bf16`` is trained only by labkit's stochastically rounded
``StochasticAdamW``: beside another optimizer (:data:`ROUNDED_TO_NEAREST`: transformers' Adafactor
writes its fp32 update back with ``copy_``) the bf16 weights are rounded to nearest, which loses
most updates at fine-tuning learning rates (notebook 18 §2), so the planner never picks such a set
(:func:`trains`); a no-fit error names the cheapest one that would have fit. "Exact" holds under the
:data:`CONDITIONS` a lever needs (the optimizer in backward: no gradient clipping, no
accumulation; a plan names them). Costs add up
as a model of the time, not a measurement of the combination; the record's rounds spread widely
(:func:`cost_range`: a set's extra times summed round by round, shown by :func:`cost_text`), so
sets whose costs differ by less than that spread rank by chance; and a CPU's ratios on a small
model are a guide to a GPU's on a large one, not a measurement of it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import REPO_ROOT, LabkitError
from labkit.fit.search import capacity
from labkit.memory import peak

#: Each lever as the options of :func:`labkit.memory.peak.training_peak` it sets (GaLore at rank
#: 128, a choice of this planner: the rank sets the state's size; ``offload_activations`` on a
#: cuda job only; ``pure_bf16`` is labkit's ``StochasticAdamW``, whose update loop is torch's
#: single-tensor one, ``foreach=False``: no foreach copy of the parameters).
LEVERS: dict[str, dict[str, Any]] = {
    "chunked_loss": {"loss": "chunked"},
    "checkpointing": {"checkpointing": True},
    "checkpoint_every_2": {"checkpointing": True, "checkpoint_every": 2},
    "optimizer_in_backward": {"optimizer_in_backward": True},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "adafactor": {"optimizer": "adafactor"},
    "galore": {"galore_rank": 128},
    "pure_bf16": {"precision": "bf16", "impl": "single"},
    "offload_activations": {"checkpointing": True, "offload_activations": True},
}
#: The record the costs come from, and the command that re-makes it.
RECORD = REPO_ROOT / "benchmarks" / "lever_costs.json"
REMAKE = "LABKIT_THREADS=1 .venv/bin/python benchmarks/lever_costs.py"


def _cost(name: str, entry: Any, where: str) -> float:
    """One lever's cost from its entry in the record: the measured median ratio minus 1 (floored
    at 0), or the argued figure of a lever the record marks as not measured."""
    try:
        if entry["measured"] is True:
            return max(0.0, round(float(entry["ratio"]["median"]) - 1, 4))
        if entry["measured"] is False:
            return float(entry["cost"])
    except (KeyError, TypeError, ValueError):
        pass
    raise LabkitError(
        f"lever {name!r} in {where} has no cost; accepted: measured true with ratio.median, or "
        f"measured false with cost; re-make it with: {REMAKE}"
    )


def _entries(path: Path) -> dict[str, Any]:
    """The record's ``levers`` table, one line of error when it is missing, broken or lacks a
    lever of :data:`LEVERS`."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LabkitError(
            f"cannot read the lever-cost record {path} ({type(err).__name__}); "
            f"re-make it with: {REMAKE}"
        ) from None
    entries = record.get("levers") if isinstance(record, dict) else None
    if not isinstance(entries, dict):
        raise LabkitError(f"{path} has no 'levers' table; re-make it with: {REMAKE}")
    missing = [n for n in LEVERS if n not in entries]
    if missing:
        raise LabkitError(
            f"the lever-cost record {path} has no entry for lever {missing[0]!r}; "
            f"re-make it with: {REMAKE}"
        )
    return entries


def load_costs(path: Path = RECORD) -> dict[str, float]:
    """Each lever of :data:`LEVERS` -> its extra time per step (a fraction of a step), from the
    record at ``path``; one line of error when the record is missing, broken or lacks a lever."""
    entries = _entries(path)
    return {n: _cost(n, entries[n], str(path)) for n in LEVERS}


def load_cost_rounds(path: Path = RECORD) -> dict[str, tuple[float, ...] | None]:
    """Each lever of :data:`LEVERS` -> its extra time in each round of the record (its per-round
    ratios minus 1, in round order), or None for an argued figure. The rounds are interleaved
    (round i of every lever ran together), so they line up by index across levers; one line of
    error when a measured entry lacks them or two levers have different numbers of rounds."""
    entries = _entries(path)
    out: dict[str, tuple[float, ...] | None] = {}
    for n in LEVERS:
        _cost(n, entries[n], str(path))  # one line of error when the entry is broken
        if entries[n]["measured"] is not True:
            out[n] = None
            continue
        ratios = entries[n].get("ratios")
        if not isinstance(ratios, list) or not ratios:
            raise LabkitError(
                f"lever {n!r} in {path} has no per-round 'ratios'; re-make it with: {REMAKE}"
            )
        out[n] = tuple(float(r) - 1 for r in ratios)
    counts = {len(r) for r in out.values() if r is not None}
    if len(counts) > 1:
        raise LabkitError(
            f"the levers in {path} have different numbers of rounds {sorted(counts)}; "
            f"re-make it with: {REMAKE}"
        )
    return out


#: Extra time per step of each lever, a fraction of the step without it (:func:`load_costs`
#: of :data:`RECORD`: measured on a CPU, see the module docstring).
COSTS: dict[str, float] = load_costs()
#: Each lever's extra time in every round of the record, in round order (:func:`load_cost_rounds`;
#: None: an argued figure).
COST_ROUNDS: dict[str, tuple[float, ...] | None] = load_cost_rounds()
#: The smallest and largest extra time of one round of each lever in the record (the extremes
#: of :data:`COST_ROUNDS`, not floored; None: an argued figure). The spread is the noise of the
#: timing: two levers whose costs differ by less rank by chance.
COST_RANGES: dict[str, tuple[float, float] | None] = {
    n: None if r is None else (min(r), max(r)) for n, r in COST_ROUNDS.items()
}
#: Levers whose step is the step without them (within float rounding), under the
#: :data:`CONDITIONS` they need; the others change the training (8-bit or factored moments, a
#: low-rank projection, bf16 weights).
EXACT = frozenset(
    {
        "chunked_loss",
        "checkpointing",
        "checkpoint_every_2",
        "optimizer_in_backward",
        "offload_activations",
    }
)
#: What a lever needs of the training loop to be exact. The optimizer in backward updates each
#: parameter as its gradient is made, so the gradients never all exist: no clipping by their
#: global norm (transformers' Trainer clips by default, ``max_grad_norm=1.0``), and no
#: accumulation (the planner never picks it for a job with ``grad_accum`` > 1).
CONDITIONS: dict[str, str] = {
    "optimizer_in_backward": "no gradient clipping (Trainer: max_grad_norm=0) and no accumulation",
}


#: Optimizer levers that write bf16 weights back rounded to nearest: with ``pure_bf16`` an update
#: smaller than half a bf16 step is lost, most of them at fine-tuning learning rates (notebook 18
#: §2 measures it), so the planner leaves such a set out (:func:`trains`).
ROUNDED_TO_NEAREST = frozenset({"adafactor", "adamw8bit", "galore"})


def trains(names: Any, **options: Any) -> bool:
    """Whether the levers ``names`` (as :func:`lever_names` takes them) on the job ``options``
    keep a trainable update: False for ``pure_bf16`` beside a :data:`ROUNDED_TO_NEAREST` lever or
    a job whose own optimizer is not AdamW (only ``StochasticAdamW`` rounds bf16 stochastically)."""
    listed = set(lever_names(names)) if names else set()
    if "pure_bf16" not in listed:
        return True
    own = options.get("optimizer", "adamw") != "adamw" or bool(options.get("galore_rank"))
    return not (listed & ROUNDED_TO_NEAREST or own)


def cost_range(names: Any) -> tuple[float, float] | None:
    """The (smallest, largest) summed extra time of the levers ``names`` over the record's
    rounds: the measured levers' extra times added round by round (:data:`COST_ROUNDS`, lined up
    by index), plus each argued figure in every round, then the min and max of those sums; None
    when none of them is measured."""
    listed = lever_names(names) if names else ()
    rounds = [COST_ROUNDS[n] for n in listed if COST_ROUNDS[n] is not None]
    if not rounds:
        return None
    argued = sum(COSTS[n] for n in listed if COST_ROUNDS[n] is None)
    sums = [sum(r) + argued for r in zip(*rounds, strict=True)]
    return min(sums), max(sums)


def cost_text(names: Any) -> str:
    """The summed recorded cost of the levers ``names`` with the range of that sum taken round by
    round over the record's rounds (:func:`cost_range`): ``+3% (range over 25 rounds:
    -10%..+15%)``; levers with an argued figure are named."""
    listed = lever_names(names) if names else ()
    median = sum(COSTS[n] for n in listed)
    text = f"{median:+.0%}"
    spread = cost_range(listed)
    if spread is not None:
        count = len(next(COST_ROUNDS[n] for n in listed if COST_ROUNDS[n] is not None))
        text += f" (range over {count} rounds: {spread[0]:+.0%}..{spread[1]:+.0%})"
    argued = [n for n in listed if COST_ROUNDS[n] is None]
    if argued:
        text += f" ({', '.join(argued)}: an argued figure)"
    return text


@dataclass(frozen=True)
class Plan:
    """The levers chosen (``levers``, cheapest first), the predicted ``peak`` (bytes) with them,
    the summed ``cost`` (fraction of a step), the ``options`` of the peak they set, the
    ``baseline`` peak of the job without them, and the ``conditions`` (:data:`CONDITIONS`) its
    levers need to keep the step exact."""

    levers: tuple[str, ...]
    peak: int
    cost: float
    options: dict[str, Any]
    baseline: int
    conditions: tuple[str, ...] = ()
    #: The next set in the planner's order that fits too and is not these levers plus more
    #: (levers, cheapest first), or None: when its cost is within the record's spread of this
    #: plan's, the two rank by chance.
    runner_up: tuple[str, ...] | None = None


class NoPlan(LabkitError):
    """Nothing fits: the one-line error, with ``reached`` (each set of levers tried -> its
    predicted peak, bytes; ``()`` is the job without levers), ``room`` (the bytes the step may
    use) and ``left_out`` (each set that fits but does not train, :func:`trains` -> its peak) for
    a caller that shows more than the line."""

    def __init__(
        self,
        message: str,
        reached: dict[tuple[str, ...], int],
        room: int,
        left_out: dict[tuple[str, ...], int] | None = None,
    ) -> None:
        super().__init__(message)
        self.reached = reached
        self.room = room
        self.left_out = left_out or {}


def _combined(names: tuple[str, ...]) -> dict[str, Any] | None:
    """The options of ``names`` together, or None when two set the same option differently."""
    out: dict[str, Any] = {}
    for name in names:
        for key, value in LEVERS[name].items():
            if key in out and out[key] != value:
                return None
            out[key] = value
    return out


def lever_names(names: Any, auto: bool = False) -> tuple[str, ...]:
    """``names`` (a comma list or a sequence of :data:`LEVERS` names; with ``auto``, also
    ``"auto"`` or None for all of them) as a tuple, or one line naming the first unknown one."""
    if auto and (names == "auto" or names is None):
        return tuple(LEVERS)
    listed = tuple(names.split(",")) if isinstance(names, str) else tuple(names or ())
    bad = [n for n in listed if n not in LEVERS]
    if bad or not listed:
        raise LabkitError(
            f"unknown lever {bad[0] if bad else ''!r}; accepted: {'auto or ' if auto else ''}"
            "a comma list of " + ", ".join(LEVERS)
        )
    return listed


#: How a plan line shows a lever that sets more than its name says.
SHOWN: dict[str, str] = {"offload_activations": "offload_activations (checkpointing + offload)"}


def levers_text(names: Any) -> str:
    """The levers ``names`` (as :func:`lever_names` takes them) joined by " + " as a plan line
    shows them: ``offload_activations`` reads "offload_activations (checkpointing + offload)",
    since it turns checkpointing on too; "" for none."""
    return " + ".join(SHOWN.get(n, n) for n in lever_names(names)) if names else ""


def options_of(names: Any) -> dict[str, Any]:
    """The options of :func:`labkit.memory.peak.training_peak` that the levers ``names`` (a comma
    list or a sequence of :data:`LEVERS` names) set together: ``estimate --with NAMES``."""
    listed = lever_names(names)
    combined = _combined(listed)
    if combined is None:
        raise LabkitError(
            f"levers {', '.join(listed)} set the same option differently (two optimizers?); "
            "accepted: levers that can go together"
        )
    return combined


def _candidates(job: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """The levers that change something in ``job`` (one already on is no candidate); not the
    optimizer in backward for a job that accumulates micro-batches (:data:`CONDITIONS`)."""
    accumulates = (job.get("grad_accum") or 1) > 1
    return [
        n
        for n in allowed
        if any(job.get(k) != v for k, v in LEVERS[n].items())
        and not (n == "optimizer_in_backward" and accumulates)
    ]


def _check(allowed: Any, costs: dict[str, float]) -> tuple[str, ...]:
    names = lever_names(allowed, auto=True)
    missing = [n for n in names if n not in costs]
    if missing:
        raise LabkitError(f"no time cost for lever {missing[0]!r}; give one in costs")
    return names


def _order(names: tuple[str, ...], costs: dict[str, float]) -> tuple[int, float, int]:
    """Fewest levers that change the training first (a changed training is a cost no timing
    shows), then the smallest summed time, then the fewest levers."""
    return (
        sum(n not in EXACT for n in names),
        round(sum(costs[n] for n in names), 9),
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
    :func:`labkit.memory.peak.training_peak`) fits ``gib`` GiB less ``reserve`` bytes, among the
    sets that train (:func:`trains`: never ``pure_bf16`` rounded to nearest). ``levers``:
    ``"auto"`` (all of :data:`LEVERS`) or the names allowed; ``costs``: each lever's time cost
    (default :data:`COSTS`). One line of error when no set fits (:class:`NoPlan`, which
    carries every set's peak)."""
    costs = {**COSTS, **(costs or {})}
    allowed = _check(levers, costs)
    room = capacity(gib, reserve)
    baseline = peak.training_peak(config, **options).peak
    names = _candidates(options, allowed)
    combos = sorted(
        (c for r in range(len(names) + 1) for c in itertools.combinations(names, r)),
        key=lambda c: _order(c, costs),
    )
    reached: dict[tuple[str, ...], int] = {(): baseline}  # each combination's peak
    weights: int | None = None  # the smallest weights of any set (the no-fit line)
    found: list[tuple[tuple[str, ...], int, dict[str, Any]]] = []  # the first two that fit
    left_out: dict[tuple[str, ...], int] = {}  # sets that fit but do not train (trains)
    for combo in combos:
        extra = _combined(combo)
        if extra is None:
            continue
        if not trains(combo, **options):  # pure_bf16 rounded to nearest: never a plan
            if not found and not left_out:  # the cheapest such set, for the no-fit line
                try:
                    got = peak.training_peak(config, **{**options, **extra}).peak
                except LabkitError:
                    continue
                if got <= room:
                    left_out[combo] = got
            continue
        try:
            at = peak.training_peak(config, **{**options, **extra})
        except peak.NotDerived as err:  # no lever can be predicted for this job: say so
            raise LabkitError(f"cannot plan levers: {err}") from None
        except LabkitError:
            continue  # a combination the job cannot take (GaLore with 8-bit states, ...)
        got = reached[combo] = at.peak
        w = at.alive["weights"]
        weights = w if weights is None else min(weights, w)
        if got <= room and not (found and set(found[0][0]) <= set(combo)):
            found.append((tuple(sorted(combo, key=lambda n: (costs[n], n))), got, extra))
            if len(found) == 2 or not combo:  # a job that fits as it is has no runner-up
                break
    if found:
        (chosen, got, extra), second = found[0], found[1:]
        needs = tuple(f"{n}: {CONDITIONS[n]}" for n in chosen if n in CONDITIONS)
        runner_up = second[0][0] if second else None
        cost = sum(costs[n] for n in chosen)
        return Plan(chosen, got, cost, extra, baseline, needs, runner_up)
    kept = f" less a reserve of {reserve / 2**30:.2f} GiB" if reserve else ""
    method = {"full": "LoRA or QLoRA, ", "frozen": "LoRA or QLoRA, ", "lora": "QLoRA, "}
    lowest = min(reached, key=reached.get)
    smallest = reached[lowest]
    # the fewest levers within 1% of the smallest peak (not a lever that shaves a few MiB)
    best = min((c for c, p in reached.items() if p <= 1.01 * smallest), key=len)
    with_best = f" (set: {levers_text(lowest) or 'no lever'})"
    if best != lowest:  # each figure with its own set
        with_best += (
            f"; fewest levers within 1% of it: {reached[best] / 2**30:.2f} GiB "
            f"(set: {levers_text(best) or 'no lever'})"
        )
    other = method.get(options.get("method", "full"), "")
    if weights is not None and weights > room:  # no lever, batch or sequence can help
        hint = (
            f"the weights alone are {weights / 2**30:.2f} GiB, more than the room of "
            f"{room / 2**30:.2f} GiB: try {other}or more GPUs"
        )
    else:
        hint = f"try a smaller --batch or --seq, {other}or more GPUs"
    if left_out:  # a set fits, but rounds bf16 to nearest: say why it is no plan
        gone, at_gone = next(iter(left_out.items()))
        hint += (
            f" ({levers_text(gone)} would fit at {at_gone / 2**30:.2f} GiB but is left out: "
            "pure_bf16 rounded to nearest loses most updates at fine-tuning learning rates)"
        )
    raise NoPlan(
        f"nothing {'that trains ' if left_out else ''}fits {gib:g} GiB{kept}: "
        "the smallest predicted peak is "
        f"{smallest / 2**30:.2f} GiB{with_best} ({_tried(reached, baseline)}); {hint}",
        reached,
        room,
        left_out,
    )


def _tried(reached: dict[tuple[str, ...], int], baseline: int) -> str:
    """The levers the planner tried, by what each does alone to the job's peak ``baseline``: those
    that lower it, those that lower it by under 1% (the optimizer levers of a LoRA job, whose
    optimizer state is tiny), then those that raise it (``pure_bf16`` on a LoRA job, whose base
    is bf16 already), so a learner sees which ones mattered."""
    alone = {c[0]: p for c, p in reached.items() if len(c) == 1}
    if not alone:
        return "levers: none left to add"
    movers = [n for n, p in alone.items() if p < 0.99 * baseline]
    weak = [n for n, p in alone.items() if n not in movers and p <= baseline]
    up = [n for n, p in alone.items() if p > baseline]
    text = f"levers that lower this job's peak: {', '.join(movers) or 'none'}"
    text += f"; tried too, under 1% each: {', '.join(weak)}" if weak else ""
    return text + (f"; tried, raise it: {', '.join(up)}" if up else "")


def accumulation(
    config: Any, gib: float, *, reserve: int = 0, **options: Any
) -> tuple[int, int, int] | None:
    """The alternative the planner keeps out (the job's batch is its given): with no lever, the
    largest micro-batch that divides the job's ``batch`` and whose peak, accumulated over the steps
    that keep the batch (times the job's own ``grad_accum``), fits ``gib`` GiB less ``reserve``.
    Returns (micro-batch, accumulation steps, peak bytes), or None when micro-batch 1 does not fit.
    Exact with a token-normalised loss; smaller matmuls per step, so lower throughput."""
    room = capacity(gib, reserve)
    batch, accum = options.pop("batch", 1), options.pop("grad_accum", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LabkitError(f"batch must be a whole number >= 1, got {batch!r}; e.g. 4")
    for micro in sorted((n for n in range(1, batch + 1) if batch % n == 0), reverse=True):
        steps = batch // micro * accum
        got = peak.training_peak(config, batch=micro, grad_accum=steps, **options).peak
        if got <= room:
            return micro, steps, got
    return None
