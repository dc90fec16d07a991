"""Greedy answers from a causal LM or a PEFT model, cut at the first newline, and the tokenizer's
padding side set for one block of code.

Two places generate answers the same way: the chat task's exact match
(:func:`labkit.training.finetune.generate_answers`, prompts grouped by length, never padded) and a
batch whose rows use different adapters (:func:`labkit.tuners.adapters.generate_mixed`, padded on
the left). :func:`greedy_answers` is that one way. It lives in the tuners layer because adapters
(this layer) generates too, and because the rule it applies is a PEFT fact: prompt-learning
methods must generate with ``use_cache=False`` (with peft 0.21 + transformers 5 the cache silently
drops a prefix-tuning prefix, and prompt tuning / P-tuning drift from greedy decoding of the
model's own forward pass after the first token). :func:`prompt_rows` gives the virtual-token rows
such a model puts in front of its inputs (notebooks 09 and 12 compare them with the saved file).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import labkit
from labkit import checks

PADDING_SIDES = ("left", "right")


@contextmanager
def padding_side(tokenizer, side: str) -> Iterator[Any]:
    """Pad on ``side`` inside the ``with`` block; the tokenizer's own setting comes back after it.

    Scoring wants right padding (positions match an unpadded run); batched generation wants left
    padding (every row's last token is the newest).
    """
    if side not in PADDING_SIDES:
        raise labkit.unknown("padding side", side, PADDING_SIDES)
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = previous


def is_prompt_learning(model) -> bool:
    """Prompt tuning, P-tuning or prefix tuning: methods that add virtual tokens."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def prompt_rows(model) -> torch.Tensor:
    """The virtual-token rows a prompt-learning ``model`` puts in front of every input: its prompt
    encoder's output on the virtual-token ids, what ``save_pretrained`` writes (P-tuning: the
    MLP/LSTM's output, not the encoder)."""
    if not is_prompt_learning(model):
        raise labkit.LabkitError(
            f"{type(model).__name__} is not a prompt-learning model; accepted: prompt, P- or "
            "prefix tuning, e.g. peft_methods.attach(model_id, 'p-tuning-mlp')"
        )
    encoder = model.prompt_encoder[model.active_adapter]
    with torch.no_grad():
        return encoder(torch.arange(encoder.embedding.num_embeddings))


def first_line(text: str) -> str:
    """The answer part of a generated text: up to the first newline, spaces stripped."""
    return text.strip().split("\n")[0].strip()


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 14,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy continuations of a batch of prompts, each cut at its first newline.

    ``attention_mask`` defaults to all ones (an unpadded batch). ``generate_kwargs`` go to
    ``generate`` (peft's ``adapter_names=`` for a mixed batch). The model is put in eval mode.
    """
    model.eval()
    if is_prompt_learning(model):
        generate_kwargs.setdefault("use_cache", False)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids) if attention_mask is None else attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **generate_kwargs,
    )
    texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [first_line(t) for t in texts]


def cached_generate_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 14
) -> list[str]:
    """What plain ``model.generate()`` answers, with its cache (``use_cache=True``), one prompt at a
    time: for a prompt-learning model not the faithful decode (notebooks 08-10 measure how far it
    is from the model's own forward pass, :func:`labkit.tuners.peft_methods.greedy_answers`)."""
    prompts = checks.strings("prompts", prompts)
    return [
        greedy_answers(
            model,
            tokenizer,
            tokenizer(p, return_tensors="pt")["input_ids"].to(model.device),
            max_new_tokens=max_new_tokens,
            use_cache=True,
        )[0]
        for p in prompts
    ]
