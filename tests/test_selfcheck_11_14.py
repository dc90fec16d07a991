"""Self-checking exercises of notebooks 11, 13 and 14: the right answer passes, wrong ones fail."""

import numpy as np
import pytest
from peft import LoraConfig

from labkit.course import exercises
from labkit.models import zoo
from labkit.tuners import peft_methods


def _right(exercise: str) -> int:
    if exercise == "11.1":  # r=4 on q_proj and v_proj of zoo-llama, by the formula (GQA)
        c = zoo.load_config("zoo-llama")
        head = c.hidden_size // c.num_attention_heads
        q = 4 * (c.hidden_size + c.hidden_size)
        v = 4 * (c.hidden_size + c.num_key_value_heads * head)
        return (q + v) * c.num_hidden_layers
    if exercise == "11.2":  # r=8 on GPT-2's fused c_attn: 12 layers * 8 * (768 + 3 * 768)
        c = zoo.load_config("gpt2")
        return c.n_layer * 8 * (c.n_embd + 3 * c.n_embd)
    if exercise == "13.1":  # the notebook's adapter: all linear layers, r=8
        return peft_methods.count_trainable(
            LoraConfig(r=8, target_modules="all-linear"), zoo.load_config("zoo-llama")
        )
    if exercise == "14.1":  # a complete study starts nothing
        return 0
    raise AssertionError(exercise)


IDS = ["11.1", "11.2", "13.1", "14.1"]


@pytest.mark.parametrize("exercise", IDS)
def test_right_passes_wrong_fails(exercise, capsys):
    right = _right(exercise)
    assert exercises.check(exercise, right)
    assert exercises.check(exercise, np.int64(right))  # what numpy arithmetic gives
    for wrong in (right + 1, right - 1, right * 2 + 1, "right", [right]):
        assert not exercises.check(exercise, wrong), wrong
    out = capsys.readouterr().out
    assert "right!" in out and "Hint:" in out
    assert f" {right}" not in out.replace(f"{exercise}:", "")  # the answer is never printed


def test_registered_and_unanswered(capsys):
    assert set(IDS) <= set(exercises.EXERCISES)
    assert not exercises.check("11.1", None)
    assert "not answered yet" in capsys.readouterr().out


def test_11_1_is_the_formula_not_the_full_width():
    """The GQA trap: v_proj is narrower than q_proj, so 2 * q_proj's count is wrong."""
    c = zoo.load_config("zoo-llama")
    naive = 4 * 2 * (c.hidden_size + c.hidden_size) * c.num_hidden_layers
    assert c.num_key_value_heads < c.num_attention_heads
    assert not exercises.check("11.1", naive)
