"""labkit.memory.rules: the rules of thumb against the figures their sources publish, Korthikanti
et al.'s formula against the paper's own item-by-item derivation, and the course's side of the
comparison against the bytes a real step saves."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from labkit.memory import measure, rules
from labkit.models import zoo


def test_rules_of_thumb_reproduce_their_published_figures():
    assert rules.rule_weights(6e9, "fp16") == 12e9  # "a 6B model in fp16 is 12 GB"
    assert rules.rule_training_12(1e9) == 12e9  # "1B: 2 GB weights + 2 GB grads + 8 GB AdamW"
    assert rules.rule_training_8x(1e9) == 16e9
    assert rules.rule_inference_2x(1e9) == 4e9
    # ZeRO (Rajbhandari et al. 2020), Figure 1: a 7.5B model, mixed-precision Adam (K = 12):
    # 120 GB of model states per GPU without partitioning; the same 16 B/param as "8x fp16"
    assert rules.rule_training_mixed_adamw(7.5e9) == 120e9 == rules.rule_training_8x(7.5e9)
    with pytest.raises(ValueError, match="nf4"):
        rules.rule_weights(7e9, "nf4")


def _korthikanti_items(seq, batch, hidden, heads):
    """Korthikanti et al. (2022) §4.1, one GPT layer item by item (16-bit values, 1-byte masks),
    written out from the paper's list, not from the closed form."""
    sbh, as2b = seq * batch * hidden, heads * seq * seq * batch
    attention = {
        "QKV input": 2 * sbh,
        "Q and K for QK^T": 4 * sbh,
        "softmax output": 2 * as2b,
        "softmax dropout mask": 1 * as2b,
        "dropout output (attention over values)": 2 * as2b,
        "V (attention over values)": 2 * sbh,
        "output projection input": 2 * sbh,
        "attention dropout mask": 1 * sbh,
    }
    mlp = {
        "first linear input": 2 * sbh,
        "GeLU input": 8 * sbh,
        "second linear input (GeLU output)": 8 * sbh,
        "dropout mask": 1 * sbh,
    }
    norms = {"two LayerNorm inputs": 4 * sbh}
    return {**attention, **mlp, **norms}


@pytest.mark.parametrize(
    ("layers", "hidden", "heads", "seq", "batch"),
    [(96, 12288, 96, 2048, 1), (12, 768, 12, 1024, 1), (32, 4096, 32, 4096, 2)],
)
def test_korthikanti_formula_equals_the_papers_items(layers, hidden, heads, seq, batch):
    """s·b·h·(34 + 5·a·s/h) per layer is the sum of the paper's items (11 + 5as/h attention,
    19 MLP, 4 LayerNorms); GPT-3 175B's sizes first."""
    per_layer = sum(_korthikanti_items(seq, batch, hidden, heads).values())
    assert rules.rule_activations_korthikanti(layers, hidden, heads, seq, batch) == (
        layers * per_layer
    )


def test_gpt2_matches_the_formula_where_the_ops_are_the_same():
    c = rules.compare("gpt2", 1024, "fp16")
    # softmax output, dropout mask and dropout output: exactly Korthikanti's 5·a·s²·b
    assert c.course["quadratic"] == 5.0
    # gelu_new written in Python keeps five b·s·4h tensors (40 sbh) where a fused GeLU keeps two
    assert c.course["mlp"] - rules.KORTHIKANTI["mlp"] == 24.0
    assert c.formula_bytes == rules.rule_activations_korthikanti(12, 768, 12, 1024, 1)


def test_the_course_side_is_what_a_real_step_saves():
    """The course's figure in the comparison (eager, dropout on, no checkpointing) is the bytes
    autograd saves in a real CPU step of a GPT-2 (masks in the activation dtype on CPU)."""
    config = zoo.load_config("tiny-gpt2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()
    ids = torch.randint(3, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    saved = measure.saved_tensor_bytes(model, ids, checkpointing=False)
    c = rules.compare(config, 32, "fp32", batch=2, device="cpu")
    assert c.course_bytes == saved.activations
    assert c.course_bytes > c.formula_bytes  # more than the formula, even at 4-byte values


def test_llama_keeps_fp32_softmax_and_norm_inputs():
    c = rules.compare("llama-2-7b", 4096, "bf16")
    assert c.course["quadratic"] == 6.0  # fp32 softmax (4) + its bf16 copy (2), no dropout
    assert 16.0 <= c.course["norms"] < 16.01  # fp32 input (4) + normed (2) + output (2), twice
    assert c.course["mlp"] == 8 * 11008 / 4096  # SwiGLU: four b·s·i tensors, no dropout mask
