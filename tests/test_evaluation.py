"""labkit.training.lm_loss: held-out loss equals a hand-computed cross-entropy; padding is ignored."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labkit import LabkitError
from labkit.training import lm_loss

WORDS = ["<pad>", "<unk>", "the", "fox", "lives", "in", "forest", "a", "bear", "cave", "."]


@pytest.fixture(scope="module")
def lm():
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    tokenizer.padding_side = "left"  # the function must not depend on it
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval(), tokenizer


@torch.no_grad()
def _manual(model, tokenizer, text):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    return float(nll), ids.shape[1] - 1


def test_loss_matches_manual_cross_entropy_and_ignores_padding(lm):
    model, tokenizer = lm
    texts = ["the fox lives in the forest .", "a bear ."]
    parts = [_manual(model, tokenizer, t) for t in texts]
    expected = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    got = lm_loss.causal_lm_loss(model, tokenizer, texts, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-5)
    assert lm_loss.causal_lm_loss(model, tokenizer, texts, batch_size=1) == pytest.approx(
        expected, rel=1e-5
    )
    assert tokenizer.padding_side == "left"
    assert lm_loss.perplexity(got) == pytest.approx(math.exp(expected), rel=1e-5)


def test_bad_input(lm):
    model, tokenizer = lm
    with pytest.raises(LabkitError):
        lm_loss.causal_lm_loss(model, tokenizer, [])
    with pytest.raises(LabkitError):
        lm_loss.causal_lm_loss(model, tokenizer, ["fox"])
