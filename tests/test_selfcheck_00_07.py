"""Self-checking exercises of notebooks 00-07: a right answer passes, a wrong one fails."""

import math

import pytest
import torch

from labkit.course import exercises
from labkit.memory import activations, estimator
from labkit.models import architecture, zoo
from labkit.quant import formats, integer


def _right_answers():
    gpt2 = zoo.load_config("tiny-gpt2")
    on, off = (
        activations.activation_bytes(gpt2, 2, 32, "fp32", "sdpa", dropout=d, device="cpu").total
        for d in (True, False)
    )
    w = estimator.weight_bytes("qwen2.5-0.5b", "bf16")
    s = 256
    while (
        activations.activation_bytes("qwen2.5-0.5b", 1, s, "bf16", checkpointing=True).logits <= w
    ):
        s += 256
    b8 = estimator.training_memory("llama-3.1-8b", batch=1, seq=2048, checkpointing=True)
    opt = {
        o: estimator.training_memory("llama-2-7b", optimizer=o).optimizer
        for o in ("adamw", "adamw8bit")
    }
    llama = zoo.load_config("zoo-llama")
    kept = [
        activations.activation_bytes(
            llama, 2, 128, "fp32", "sdpa", checkpointing=ck, device="cpu"
        ).total
        for ck in (0, 1)
    ]
    x = torch.tensor([1.2, -0.5, -4.3, 1.2, -3.1, 0.8, 2.4, 5.4])
    q4, s4 = integer.absmax_quantize(x, bits=4)
    return {
        "00.1": architecture.count_parameters(zoo.load_config("tiny-qwen2")),
        "00.3": math.log(llama.vocab_size)
        * 1.01,  # an untrained model lands within a few % of ln V
        "01.1": estimator.weight_bytes("mistral-7b", "bf16") / 2**30,
        "01.2": s,
        "01.3": on - off,
        "02.1": (opt["adamw"] - opt["adamw8bit"]) / 2**30,
        "02.3": 1 - kept[1] / kept[0],
        "03.1": architecture.count_parameters("qwen2.5-7b"),
        "03.3": estimator.sharded(b8, 8, "zero3").total / 2**30,
        "04.1": float(torch.tensor(0.1).bfloat16()) - 0.1,
        "04.2": (2049, 257),
        "05.1": (integer.absmax_dequantize(q4, s4) - x).abs().max().item(),
        "06.1": 4 + 8 / 128 + 32 / (128 * 256),
        "07.1": 16 / 128,
    }


RIGHT = _right_answers()


def _wrong(answer):
    if isinstance(answer, tuple):
        return tuple(a + 1 for a in answer)
    return answer + 1 if isinstance(answer, int) else answer * 1.2


@pytest.mark.parametrize("key", sorted(RIGHT))
def test_right_passes_wrong_fails(key):
    assert exercises.check(key, RIGHT[key])
    assert not exercises.check(key, _wrong(RIGHT[key]))
    assert not exercises.check(key, "not a number")


def test_zoo_probability_exercise():
    """00.2 needs the zoo model: the greedy next token's probability, not another one's."""
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([tok("The fox lives in the")["input_ids"]])).logits[
            0, -1
        ]
    probs = probs.softmax(-1)
    assert exercises.check("00.2", probs.max().item())
    assert not exercises.check("00.2", probs.sort().values[-2].item())


def test_every_exercise_of_00_07_is_covered():
    mine = {k for k in exercises.EXERCISES if k[:2] in {f"0{n}" for n in range(8)}}
    assert mine == set(RIGHT) | {"00.2"}
    assert formats.decode(0.1, "bf16").value == 0.10009765625  # round to nearest, as 04.1 says
