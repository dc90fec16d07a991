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
def _lora_count(model_id: str, r: int, targets: list[str] | str) -> Callable[[], int]:
    """The LoRA parameter count of ``r`` on ``targets`` of a zoo/catalog config (peft's rule)."""

    def expected() -> int:
        from peft import LoraConfig

        from labkit import peft as lp
        from labkit import zoo

        return lp.count_trainable(
            LoraConfig(r=r, target_modules=targets), zoo.load_config(model_id)
        )

    return expected


EXERCISES.update(
    {
        "11.1": Exercise(
            integer(_lora_count("zoo-llama", 4, ["q_proj", "v_proj"])),
            "r·(d_in + d_out) per layer and per target, times the layers; with GQA v_proj's "
            "d_out is num_key_value_heads · head_dim, not hidden_size",
        ),
        "11.2": Exercise(
            integer(_lora_count("gpt2", 8, ["c_attn"])),
            "c_attn maps hidden_size to three times hidden_size (q, k, v fused); count "
            "r·(d_in + d_out) once per layer, for every layer of the gpt2 config",
        ),
    }
)


# --- notebook 12 ---
EXERCISES.update({})


# --- notebook 13 ---
EXERCISES.update(
    {
        "13.1": Exercise(
            integer(_lora_count("zoo-llama", 8, "all-linear")),  # RANK = 8 in the notebook
            "sum p.numel() over the model's named_parameters whose name contains 'lora_' "
            "(A and B of every adapted layer); the notebook's default RANK is 8",
        ),
    }
)


# --- notebook 14 ---
EXERCISES.update(
    {
        "14.1": Exercise(
            integer(0),
            "--n-trials N counts COMPLETE trials already in the study; how many are missing?",
        ),
    }
)


# --- notebook 15 ---
EXERCISES.update({})


# --- notebook 16 ---
EXERCISES.update({})


# --- notebook 17 ---
EXERCISES.update({})


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
