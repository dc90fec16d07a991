"""labkit.tuners.generation: the padding side comes back, answers are greedy and cut at newline."""

import pytest
import torch

from labkit import LabkitError
from labkit.models import zoo
from labkit.tuners import generation


@pytest.fixture(scope="module")
def tok():
    return zoo.load_tokenizer("tiny-llama")


def test_padding_side_is_restored_even_after_an_error(tok):
    side = tok.padding_side
    other = "left" if side == "right" else "right"
    with generation.padding_side(tok, other):
        assert tok.padding_side == other
    assert tok.padding_side == side
    with pytest.raises(ZeroDivisionError), generation.padding_side(tok, other):
        raise ZeroDivisionError
    assert tok.padding_side == side
    with pytest.raises(LabkitError, match="unknown padding side 'middle'"):
        with generation.padding_side(tok, "middle"):
            pass


def test_greedy_answers_are_generate_cut_at_the_first_newline(tok):
    model = zoo.load_model("tiny-llama")
    ids = tok(["Human: Where does the fox live?\nAssistant:"], return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert generation.greedy_answers(model, tok, ids, max_new_tokens=8) == [
        generation.first_line(text)
    ]
    assert generation.first_line("  The fox.\nHuman: more\n") == "The fox."
    assert not model.training


def test_cached_generate_answers_are_plain_generate_with_its_cache(tok):
    """For a prompt-learning model greedy_answers turns the cache off; cached_generate_answers
    gives what a plain ``model.generate()`` (cache on, its default) answers, prompt by prompt."""
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(
        zoo.load_model("tiny-llama"),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    prompts = ["Human: Where does the fox live?\nAssistant:", "Human: Hi\nAssistant:"]
    want = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
        )
        text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        want.append(generation.first_line(text))
    assert generation.cached_generate_answers(model, tok, prompts, max_new_tokens=6) == want
    with pytest.raises(LabkitError, match="prompts"):
        generation.cached_generate_answers(model, tok, "Human: Hi\nAssistant:")


@pytest.mark.parametrize("method", ["prompt", "p-tuning-mlp", "prefix"])
def test_prompt_rows_are_what_save_pretrained_writes(method, tmp_path):
    """The encoder's output on the virtual-token ids is the saved tensor (P-tuning: not the
    encoder's input embedding); a model without virtual tokens is one clear error."""
    from safetensors.torch import load_file

    from labkit.tuners import peft_methods

    model = peft_methods.attach("tiny-llama", method)
    rows = generation.prompt_rows(model)
    model.save_pretrained(tmp_path)
    (saved,) = load_file(tmp_path / "adapter_model.safetensors").values()
    assert torch.equal(rows, saved)
    assert rows.shape[0] == model.peft_config["default"].num_virtual_tokens
    if method == "p-tuning-mlp":
        assert not torch.allclose(rows, model.prompt_encoder["default"].embedding.weight)
    for bad in (peft_methods.attach("tiny-llama", "lora"), zoo.load_model("tiny-llama"), "p"):
        with pytest.raises(LabkitError, match="not a prompt-learning model"):
            generation.prompt_rows(bad)
