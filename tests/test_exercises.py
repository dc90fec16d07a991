"""labkit.course.exercises: right, wrong, unanswered and unknown exercises; labkit.unknown's wording.

The answer keys themselves, against answers computed another way, and their place in the
notebooks: tests/test_exercise_keys.py."""

import numpy as np
import pytest

from labkit import LabkitError, unknown
from labkit.course import exercises


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(
        exercises.EXERCISES, "99.1", exercises.Exercise(exercises.number(0.1, rel=1e-3), "think")
    )
    monkeypatch.setitem(
        exercises.EXERCISES, "99.2", exercises.Exercise(exercises.integer(lambda: 42), "count")
    )
    monkeypatch.setitem(
        exercises.EXERCISES, "99.3", exercises.Exercise(lambda f: f(3) == 9, "square it")
    )


def test_right_and_wrong(registry, capsys):
    assert exercises.check("99.1", 0.10001)
    assert not exercises.check("99.1", 0.2)
    assert exercises.check("99.2", np.int64(42))
    assert not exercises.check("99.2", 42.5)
    assert exercises.check("99.3", lambda x: x * x)
    assert not exercises.check("99.3", lambda x: 1 / 0)  # a raising answer is wrong, not a crash
    out = capsys.readouterr().out
    assert "right!" in out and "Hint: think" in out and "ZeroDivisionError" in out
    assert "0.1 " not in out.replace("0.10001", "")  # the expected value is never printed


def test_unanswered_and_unknown(registry, capsys):
    assert not exercises.check("99.1")
    assert "not answered yet" in capsys.readouterr().out
    with pytest.raises(LabkitError, match=r"unknown exercise '42\.9'; accepted: .*99\.1"):
        exercises.check("42.9", 1)


def test_registered_exercises_are_well_formed():
    for key, entry in exercises.EXERCISES.items():
        assert len(key) == 4 and key[2] == "." and key[3] in "123" and entry.hint, key


def test_unknown_wording():
    err = unknown("optimizer", "adam9", ["adamw", "sgd"])
    assert isinstance(err, LabkitError)
    assert str(err) == "unknown optimizer 'adam9'; accepted: adamw, sgd"


def test_a_check_in_a_notebook_never_fails_a_top_to_bottom_run(registry, capsys):
    """An unanswered check prints how to answer and returns None: the notebook runs on, and
    Jupyter shows no ``Out[]`` line under the printed one."""
    answer = None
    assert exercises.check("99.2", answer) is None
    assert "99.2: not answered yet" in capsys.readouterr().out
