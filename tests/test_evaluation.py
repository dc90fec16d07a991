"""labkit.training.lm_loss: held-out loss equals a hand-computed cross-entropy; padding is ignored;
the loss is token-weighted whatever the batching (texts, packed blocks, labelled batches)."""

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


def test_token_weighted_whatever_the_batching(lm):
    model, tokenizer = lm
    words = ("the fox lives in the forest . a bear lives in a cave . " * 4).split()
    ids = [WORDS.index(w) if w in WORDS else 1 for w in words][:35]
    blocks = torch.tensor(ids).view(7, 5)  # 7 blocks: batches of 2 leave a short last one
    by = {b: lm_loss.blocks_loss(model, blocks, batch_size=b) for b in (1, 2, blocks.shape[0])}
    assert by[1] == pytest.approx(by[2], rel=1e-5) and by[1] == pytest.approx(
        by[blocks.shape[0]], rel=1e-5
    )
    # a mean of per-batch means would weigh the short last batch's block as much as two
    per_block = [lm_loss.blocks_loss(model, b[None]) for b in blocks]
    batch_means = [
        sum(per_block[i : i + 2]) / len(per_block[i : i + 2]) for i in range(0, len(per_block), 2)
    ]
    assert by[2] == pytest.approx(sum(per_block) / len(per_block), rel=1e-5)
    assert sum(batch_means) / len(batch_means) != pytest.approx(by[2], rel=1e-5)


def test_labelled_batch_equals_the_models_own_loss(lm):
    """With labels (-100 on a masked prompt and on padding) the loss is the model's own loss."""
    model, tokenizer = lm
    enc = tokenizer(
        ["the fox lives in the forest .", "a bear ."], return_tensors="pt", padding=True
    )
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :2] = -100  # a masked prompt
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": labels,
    }
    with torch.no_grad():
        own = float(model(**batch).loss)
    assert lm_loss.mean_loss(model, [batch]) == pytest.approx(own, rel=1e-6)


def test_pack_cuts_texts_with_end_of_text_into_blocks():
    from labkit.models import zoo

    tok = zoo.load_tokenizer("zoo-llama")
    texts = ["The fox lives in the forest.", "A bear sleeps in a cave."] * 20
    blocks = lm_loss.pack(tok, texts, block=16)
    flat = [i for t in texts for i in tok(t)["input_ids"] + [tok.eos_token_id]]
    assert (
        blocks.shape == (len(flat) // 16, 16)
        and blocks.flatten().tolist() == flat[: blocks.numel()]
    )
    assert lm_loss.pack(tok, texts).shape[1] == tok.model_max_length  # the zoo Llama's context
    with pytest.raises(LabkitError, match="block"):
        lm_loss.pack(tok, texts, block=1)


def test_story_losses_are_each_texts_own_loss_and_paired_interval(lm):
    """One mean per text, padding left out (a text alone gives the same); the paired interval
    holds 0 for a difference that is noise and excludes it for a constant shift."""
    model, tokenizer = lm
    texts = ["the fox lives in the forest .", "a bear .", "a bear lives in a cave ."]
    per = lm_loss.story_losses(model, lm_loss.text_batches(tokenizer, texts, batch_size=3))
    alone = [lm_loss.causal_lm_loss(model, tokenizer, [t]) for t in texts]
    assert per.shape == (3,) and per.tolist() == pytest.approx(alone, rel=1e-5)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, generator=g)
    lo, hi = lm_loss.paired_interval(a, a.roll(1))  # the same values, paired at random
    assert lo < 0 < hi
    lo, hi = lm_loss.paired_interval(a + 0.5, a)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    with pytest.raises(LabkitError, match="same shape"):
        lm_loss.paired_interval(a, a[:5])
    with pytest.raises(LabkitError, match="at least 2"):
        lm_loss.paired_interval(a[:1], a[:1])
