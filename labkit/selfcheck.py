"""Self-checking exercises: ``check("05.1", answer)`` says right or wrong, with a hint.

The learner computes an answer in an exercise cell and calls :func:`check`; it never prints the
expected value or the solution (those stay in the notebook's collapsed solution). Each notebook
registers its exercises in its own block below, keyed ``"NN.T"`` (notebook, tier 1-3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labkit import LabkitError, unknown


@dataclass(frozen=True)
class Exercise:
    """How to judge one answer: ``accept(answer) -> bool`` and a hint shown when it is wrong."""

    accept: Callable[[Any], bool]
    hint: str


def number(expected: float | Callable[[], float], rel: float = 1e-3, abs_: float = 0.0):
    """Accept a real number within ``rel`` (relative) or ``abs_`` of ``expected``.

    ``expected`` may be a zero-argument callable, evaluated only when the learner checks (so
    importing this module stays cheap and the value is computed, not written down).
    """

    def accept(answer: Any) -> bool:
        want = expected() if callable(expected) else expected
        try:
            got = float(answer)
        except (TypeError, ValueError):
            return False
        return math.isfinite(got) and math.isclose(got, want, rel_tol=rel, abs_tol=abs_)

    return accept


def integer(expected: int | Callable[[], int]):
    """Accept exactly this integer (an ``int``, a numpy integer or an integral float)."""

    def accept(answer: Any) -> bool:
        want = expected() if callable(expected) else expected
        try:
            return float(answer) == want and int(answer) == want
        except (TypeError, ValueError, OverflowError):
            return False

    return accept


EXERCISES: dict[str, Exercise] = {}

# Each notebook's block: EXERCISES.update({"NN.T": Exercise(accept, hint), ...}).
# --- notebook 00 ---
EXERCISES.update({})


# --- notebook 01 ---
EXERCISES.update({})


# --- notebook 02 ---
EXERCISES.update({})


# --- notebook 03 ---
EXERCISES.update({})


# --- notebook 04 ---
EXERCISES.update({})


# --- notebook 05 ---
EXERCISES.update({})


# --- notebook 06 ---
EXERCISES.update({})


# --- notebook 07 ---
EXERCISES.update({})


# --- notebook 08 ---
EXERCISES.update({})


# --- notebook 09 ---
EXERCISES.update({})


# --- notebook 10 ---
EXERCISES.update({})


# --- notebook 11 ---
EXERCISES.update({})


# --- notebook 12 ---
EXERCISES.update({})


# --- notebook 13 ---
EXERCISES.update({})


# --- notebook 14 ---
EXERCISES.update({})


# --- notebook 15 ---
def _ddp_bytes_sent_by_4_ranks() -> float:
    from labkit import architecture, parallel, zoo

    grads = 4 * architecture.count_parameters(zoo.load_config("zoo-llama"))  # fp32 gradients
    return parallel.ring_sent(parallel.textbook_payload("ddp", 0, grads), 4)


EXERCISES.update(
    {
        "15.1": Exercise(
            number(_ddp_bytes_sent_by_4_ranks, rel=1e-6),
            "a ring all-reduce sends 2(N-1)/N of the payload; DDP's payload is the gradients",
        )
    }
)


# --- notebook 16 ---
def _forgetting_first_epoch_share() -> float:
    """Share of full fine-tuning's corpus-loss rise after epoch 1 (from the seed record)."""
    from labkit import forgetting

    return forgetting.first_epoch_share(forgetting.load_record(), "full")


EXERCISES.update(
    {
        "16.1": Exercise(
            number(_forgetting_first_epoch_share, rel=1e-3),
            "take the seed means per epoch from fg.epoch_bands(record, 'full')['mean'], then "
            "(after epoch 1 - before) / (after the last epoch - before)",
        ),
    }
)


# --- notebook 17 ---
def _nb17_warmup() -> float:
    from labkit import roofline

    return roofline.decode_tokens_per_s(roofline.decode_cost("qwen2.5-7b", "bf16"), "rtx-4090")


def _nb17_practice() -> int:
    from labkit import roofline

    cost = roofline.decode_cost("llama-3.1-8b", "bf16")
    return next(
        b
        for b in range(1, 100_000)
        if roofline.regime(cost, "a100-80gb-sxm", batch=b) == "compute-bound"
    )


def _nb17_challenge() -> float:
    from labkit import roofline

    cost = roofline.decode_cost("llama-3.1-8b", "nf4")
    batch = roofline.max_batch(cost, "rtx-4090", context=4096)
    return roofline.decode_tokens_per_s(cost, "rtx-4090", batch=batch, context=4096)


EXERCISES.update(
    {
        "17.1": Exercise(
            number(_nb17_warmup, rel=0.01),
            "batch 1: tokens/s = card bandwidth (bytes/s) / bytes read per step "
            "(roofline.decode_cost(...).weight_bytes)",
        ),
        "17.2": Exercise(
            integer(_nb17_practice),
            "loop over batch sizes and ask roofline.regime(cost, card, batch=b) for the first "
            "'compute-bound'",
        ),
        "17.3": Exercise(
            number(_nb17_challenge, rel=0.01),
            "roofline.max_batch(cost, card, context=4096) gives the batch; then "
            "decode_tokens_per_s at that batch and context (summed over the batch)",
        ),
    }
)


def check(exercise: str, answer: Any = None) -> bool:
    """Say whether ``answer`` is right for ``exercise`` (e.g. ``"05.1"``); return True if it is.

    ``None`` or ``...`` means "not answered yet": it prints how to answer and returns False, so a
    notebook run top to bottom never fails on an exercise the learner has not done.
    """
    if exercise not in EXERCISES:
        raise unknown("exercise", exercise, sorted(EXERCISES) or ["(none registered)"])
    if answer is None or answer is ...:
        print(f"{exercise}: not answered yet; set `answer = ...` above and run this cell again")
        return False
    entry = EXERCISES[exercise]
    try:
        ok = bool(entry.accept(answer))
    except LabkitError:
        raise
    except Exception as err:  # a learner's function that raises is a wrong answer, not a crash
        print(
            f"{exercise}: not yet; your answer raised {type(err).__name__}: {err}. Hint: {entry.hint}"
        )
        return False
    print(f"{exercise}: right!" if ok else f"{exercise}: not yet. Hint: {entry.hint}")
    return ok
