"""Held-out loss and perplexity of a causal LM on plain text: the model-level quality measure
used to judge precision and quantization choices (lower is better; ``ppl = exp(loss)``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from labkit import LabkitError


@torch.no_grad()
def causal_lm_loss(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int = 128,
    batch_size: int = 16,
) -> float:
    """Mean next-token cross-entropy (nats per token) over ``texts``, padding ignored.

    Each text is tokenized (truncated to ``max_length``) and scored in batches; the mean is over
    all predicted tokens, so long and short texts weigh by their token counts. Batches are padded
    on the right (so positions match an unpadded run); the tokenizer's setting is restored.
    """
    if isinstance(texts, str | bytes):  # a string would be scored character by character
        raise LabkitError("texts is one string; accepted: a list of strings (wrap it: [text])")
    if not texts:
        raise LabkitError("no texts to evaluate; accepted: a non-empty list of strings")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise LabkitError(
                f"text {i} is {type(text).__name__}, not a string; accepted: a list of strings"
            )
    if max_length < 2 or batch_size < 1:
        raise LabkitError(
            f"max_length must be >= 2 and batch_size >= 1, got {max_length}, {batch_size}"
        )
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    if count == 0:
        raise LabkitError(
            "the texts gave no tokens to predict; accepted: texts of at least 2 tokens"
        )
    return total / count


def perplexity(loss: float) -> float:
    """``exp(loss)``: the effective number of equally likely next tokens."""
    return math.exp(loss)
