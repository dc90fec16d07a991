"""Self-check exercises of notebooks 08, 09, 10 and 12: a right answer passes, a wrong one fails."""

import pytest

from labkit.course import exercises
from labkit.models import zoo
from labkit.tuners import peft_methods

H = 192  # zoo-llama's hidden size (asserted below)


def _rms_ratio() -> float:
    w = zoo.load_model("zoo-llama").get_input_embeddings().weight.detach()
    return 0.3 / w.pow(2).mean().sqrt().item()


RIGHT = {
    "08.1": lambda: 20 * H,
    "08.2": _rms_ratio,
    "09.1": lambda: 4 * H + (H * 32 + 32) + (32 * 32 + 32) + (32 * H + H),
    "09.2": lambda: 8 * H,
    "10.1": lambda: 20 * 32 * 2 * (8 * 128),
    "10.2": lambda: 4.0,
    "12.1": lambda: 6_738_415_616 / (32 * 2 * 8 * (4096 + 4096)),
}


def test_hidden_size():
    assert zoo.load_config("zoo-llama").hidden_size == H


@pytest.mark.parametrize("key", sorted(RIGHT))
def test_right_passes_wrong_fails(key, capsys):
    right = RIGHT[key]()
    assert exercises.check(key, right)
    assert not exercises.check(key, right * 1.5 + 1)
    assert not exercises.check(key, "not a number")
    out = capsys.readouterr().out
    assert "right!" in out and "Hint:" in out


def test_count_answers_match_peft():
    cfg = zoo.load_config("zoo-llama")
    assert RIGHT["08.1"]() == peft_methods.count_trainable(
        peft_methods.make_config("prompt", "zoo-llama", num_virtual_tokens=20), cfg
    )
    assert RIGHT["09.1"]() == peft_methods.count_trainable(
        peft_methods.make_config(
            "p-tuning-mlp", "zoo-llama", num_virtual_tokens=4, encoder_hidden_size=32
        ),
        cfg,
    )
    assert RIGHT["10.1"]() == peft_methods.count_trainable(
        peft_methods.make_config("prefix", "zoo-llama", num_virtual_tokens=20), "llama-3.1-8b"
    )
