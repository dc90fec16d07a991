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
def _zoo_hidden() -> int:
    from labkit import zoo

    return zoo.load_config("zoo-llama").hidden_size


def _first_step_over_embedding_rms(lr: float = 0.3) -> float:
    """Adam's first step (~lr per coordinate) over the RMS of zoo-llama's token embeddings."""
    from labkit import zoo

    weight = zoo.load_model("zoo-llama").get_input_embeddings().weight.detach()
    return lr / weight.pow(2).mean().sqrt().item()


EXERCISES.update(
    {
        "08.1": Exercise(
            integer(lambda: 20 * _zoo_hidden()),
            "each virtual token is one row as wide as the model's hidden size",
        ),
        "08.2": Exercise(
            number(_first_step_over_embedding_rms, rel=0.02),
            "Adam's first update is about lr on every coordinate; divide by the RMS of the "
            "embedding matrix (square, mean, square root)",
        ),
    }
)


# --- notebook 09 ---
def _p_tuning_mlp_count(n: int, e: int) -> int:
    """P-tuning with an MLP encoder: n*h virtual tokens + Linear(h,e), Linear(e,e), Linear(e,h)."""
    h = _zoo_hidden()
    return n * h + (h * e + e) + (e * e + e) + (e * h + h)


def _p_tuning_kept() -> int:
    from labkit import peft as lp

    return lp.DEFAULTS["p-tuning-mlp"]["num_virtual_tokens"] * _zoo_hidden()


EXERCISES.update(
    {
        "09.1": Exercise(
            integer(lambda: _p_tuning_mlp_count(4, 32)),
            "virtual tokens n*h plus three Linear layers h->e, e->e, e->h, each with a bias",
        ),
        "09.2": Exercise(
            integer(_p_tuning_kept),
            "only the encoder's output is kept: one hidden-size vector per virtual token",
        ),
    }
)


# --- notebook 10 ---
def _prefix_count(name: str, n: int) -> int:
    """Prefix tuning: n virtual tokens x L layers x (key + value) x n_kv * head_dim."""
    from labkit import zoo

    c = zoo.load_config(name)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return n * c.num_hidden_layers * 2 * kv * head_dim


EXERCISES.update(
    {
        "10.1": Exercise(
            integer(lambda: _prefix_count("llama-3.1-8b", 20)),
            "one key and one value vector per virtual token in every layer, each as wide as "
            "n_kv_heads x head_dim",
        ),
        "10.2": Exercise(
            number(lambda: _prefix_count("llama-2-7b", 10) / _prefix_count("mistral-7b", 10)),
            "both have 32 layers and head_dim 128: compare their numbers of key/value heads",
        ),
    }
)


# --- notebook 11 ---
EXERCISES.update({})


# --- notebook 12 ---
def _full_over_lora_qv() -> float:
    """Llama-2-7B: all parameters / LoRA r 8 on q_proj and v_proj."""
    from labkit import memory
    from labkit import peft as lp

    cfg = lp.make_config("lora", "zoo-llama", target_modules=["q_proj", "v_proj"])
    return memory.count_parameters("llama-2-7b") / lp.count_trainable(cfg, "llama-2-7b")


EXERCISES.update(
    {
        "12.1": Exercise(
            number(_full_over_lora_qv, rel=1e-3),
            "LoRA adds r*(d_in+d_out) per adapted matrix: 2 matrices per layer, 32 layers; "
            "divide the model's parameter count by that",
        ),
    }
)


# --- notebook 13 ---
EXERCISES.update({})


# --- notebook 14 ---
EXERCISES.update({})


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
