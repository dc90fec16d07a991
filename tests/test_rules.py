"""labkit.memory.rules: the course's per-layer groups against Korthikanti et al.'s constants."""

import pytest

from labkit.memory import activations, estimator, rules


def test_gpt2_matches_the_formula_where_the_ops_are_the_same():
    c = rules.compare("gpt2", 1024, "fp16")
    # softmax output, dropout mask and dropout output: exactly Korthikanti's 5·a·s²·b
    assert c.course["quadratic"] == 5.0
    # gelu_new written in Python keeps five b·s·4h tensors (40 sbh) where a fused GeLU keeps two
    assert c.course["mlp"] - rules.KORTHIKANTI["mlp"] == 24.0
    assert c.formula_bytes == estimator.rule_activations_korthikanti(12, 768, 12, 1024, 1)


@pytest.mark.parametrize("name,dtype,seq", [("gpt2", "fp16", 512), ("llama-2-7b", "bf16", 2048)])
def test_gap_is_reconciled_to_the_byte(name, dtype, seq):
    c = rules.compare(name, seq, dtype)
    assert c.explained_gap() == pytest.approx(c.course_bytes - c.formula_bytes, abs=1e-3)
    assert c.course_bytes == activations.activation_bytes(name, 1, seq, dtype, "eager").activations


def test_llama_keeps_fp32_softmax_and_norm_inputs():
    c = rules.compare("llama-2-7b", 4096, "bf16")
    assert c.course["quadratic"] == 6.0  # fp32 softmax (4) + its bf16 copy (2), no dropout
    assert 16.0 <= c.course["norms"] < 16.01  # fp32 input (4) + normed (2) + output (2), twice
    assert c.course["mlp"] == 8 * 11008 / 4096  # SwiGLU: four b·s·i tensors, no dropout mask
