"""The causal-LM loss, one way: next-token cross-entropy averaged over the predicted tokens (nats
per token), padding and masked (-100) labels left out; ``perplexity = exp(loss)``.

Every loss the course evaluates is :func:`mean_loss` over some batches:

- :func:`causal_lm_loss`: held-out texts (notebooks 05-07, the corpus loss of notebook 16);
- :func:`blocks_loss`: packed pretraining blocks (:func:`pack`; notebook 00, the zoo build);
- :func:`labkit.training.finetune.chat_loss`: the answer tokens of the chat task (labels -100 on
  the prompt);
- :func:`labkit.training.forgetting.loss_after_marker`: the same per-token losses, split by the
  token before them.

:func:`story_losses` keeps one mean per text instead, for paired text-by-text comparisons of two
models (:func:`paired_interval`, a bootstrap interval of the mean difference).

**Token-weighted**: the sum over every counted token divided by their number, so a text or a batch
weighs as many tokens as it has (a mean of per-batch means would weigh the tokens of a short last
batch more). Over one batch it is what the model's own ``model(input_ids, labels=...).loss``
computes; training steps use that one (it is what :func:`labkit.memory.measure.lm_loss` measures).
Models with virtual tokens (prompt tuning, P-tuning) are scored on their real tokens only
(:func:`aligned_logits`).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from labkit import LabkitError, checks
from labkit.tuners.generation import padding_side

IGNORE = -100


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block (no dropout); its training flag comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def aligned_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits at the positions of ``input_ids``, for any causal LM or PEFT model.

    Prompt tuning and P-tuning prepend virtual tokens inside ``forward``, so their logits have
    that many extra positions in front: they are dropped. Any other model's logits pass as they are.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.shape[1] != input_ids.shape[1]:
        logits = logits[:, -input_ids.shape[1] :]
    return logits


def next_token_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What each position but the last predicts: the next label (``labels`` when the batch has
    them, else the next input id), -100 where nothing counts (padding, a masked prompt)."""
    if batch.get("labels") is not None:
        return batch["labels"][:, 1:]
    target = batch["input_ids"][:, 1:]
    mask = batch.get("attention_mask")
    return target if mask is None else target.masked_fill(mask[:, 1:] == 0, IGNORE)


def log_probs(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 next-token log-probabilities ``[B, T-1, V]`` and their targets ``[B, T-1]``.

    ``batch``: ``input_ids``, optionally ``attention_mask`` and ``labels``; moved to the model's
    device.
    """
    device = next(model.parameters()).device
    mask = batch.get("attention_mask")
    logits = aligned_logits(
        model, batch["input_ids"].to(device), None if mask is None else mask.to(device)
    ).float()
    return torch.log_softmax(logits[:, :-1], dim=-1), next_token_targets(batch).to(device)


def summed_nll(logp: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    """The summed negative log-likelihood of the counted targets, and how many there are."""
    nll = nn.functional.nll_loss(
        logp.reshape(-1, logp.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return float(nll), int((target != IGNORE).sum())


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Next-token cross-entropy over every counted token of ``batches`` (nats per token).

    Token-weighted: sum over all batches / number of tokens. The model runs in eval mode; its
    training flag is restored.
    """
    total, count = 0.0, 0
    with evaluating(model):
        for batch in batches:
            nll, n = summed_nll(*log_probs(model, batch))
            total += nll
            count += n
    if count == 0:
        raise LabkitError(
            "the texts gave no tokens to predict; accepted: texts of at least 2 tokens"
        )
    return total / count


@torch.no_grad()
def story_losses(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The mean next-token loss (nats) of each row of ``batches``, padding left out: one value per
    text, so two models can be compared text by text (:func:`paired_interval`)."""
    out = []
    with evaluating(model):
        for batch in batches:
            logp, target = log_probs(model, batch)
            nll = nn.functional.nll_loss(
                logp.transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
            )
            counts = (target != IGNORE).sum(1)
            if (counts == 0).any():
                raise LabkitError(
                    "a text gave no tokens to predict; accepted: texts of at least 2 tokens"
                )
            out.append((nll.sum(1) / counts).cpu())
    return torch.cat(out)


def paired_interval(a: torch.Tensor, b: torch.Tensor, n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the mean of ``a - b`` over paired values (the same texts, each
    resampled with its pair; fixed seed): 0 inside it means the mean difference is not resolved."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise LabkitError(
            "a and b must be tensors of the same shape (one value per text, the same texts); "
            f"got {getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}"
        )
    if a.dim() != 1 or len(a) < 2:
        raise LabkitError(
            f"need a 1-D tensor of at least 2 paired values, got shape {tuple(a.shape)}"
        )
    n = checks.positive("n", n)
    d = a - b
    g = torch.Generator().manual_seed(0)
    means = d[torch.randint(len(d), (n, len(d)), generator=g)].mean(1)
    return torch.quantile(means, 0.025).item(), torch.quantile(means, 0.975).item()


def _check_texts(texts: list[str]) -> list[str]:
    texts = checks.strings("texts", texts)  # a string would be scored character by character
    if not texts:
        raise LabkitError("no texts to evaluate; accepted: a non-empty list of strings")
    return texts


def text_batches(
    tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 16
) -> Iterator[dict[str, torch.Tensor]]:
    """``texts`` tokenized (truncated to ``max_length``) in batches padded on the right, so that
    positions match an unpadded run; the tokenizer's own padding side is left as it was."""
    texts = _check_texts(texts)
    max_length, batch_size = (
        checks.positive("max_length", max_length),
        checks.positive("batch_size", batch_size),
    )
    if max_length < 2:  # one token has nothing to predict
        raise LabkitError(f"max_length must be >= 2 tokens, got {max_length}")
    return _text_batches(tokenizer, texts, max_length, batch_size)


def _text_batches(
    tokenizer, texts: list[str], max_length: int, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(texts), batch_size):
        with padding_side(tokenizer, "right"):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def causal_lm_loss(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int = 128,
    batch_size: int = 16,
) -> float:
    """Mean next-token cross-entropy (nats per token) over ``texts``, padding ignored.

    Each text is tokenized (truncated to ``max_length``) and scored in batches of ``batch_size``;
    long and short texts weigh by their token counts (:func:`mean_loss`).
    """
    return mean_loss(model, text_batches(tokenizer, texts, max_length, batch_size))


def pack(tokenizer, texts: list[str], block: int | None = None) -> torch.Tensor:
    """Concatenate ``<s> text </s>`` for every text and cut into rows of ``block`` tokens
    (default: the tokenizer's ``model_max_length``, the zoo Llama's context); the rest is dropped.
    """
    block = tokenizer.model_max_length if block is None else block
    numeric = isinstance(block, numbers.Integral) and not isinstance(block, bool)
    if not numeric or not 2 <= block <= 1_000_000:
        raise LabkitError(f"block must be a whole number of tokens in 2..1e6, got {block!r}")
    ids: list[int] = []
    for enc in tokenizer(_check_texts(texts))["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    block = int(block)
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def blocks_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over packed ``blocks`` (:func:`pack`), nats per token."""
    batch_size = checks.positive("batch_size", batch_size)
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.is_floating_point():
        got = (
            f"a {blocks.dim()}-D {blocks.dtype} tensor"
            if isinstance(blocks, torch.Tensor)
            else type(blocks).__name__
        )
        raise LabkitError(
            f"blocks must be a 2-D tensor of token ids (rows x block), got {got}; accepted: "
            "pack(tokenizer, texts)"
        )
    return mean_loss(model, ({"input_ids": b} for b in blocks.split(batch_size)))


#: The largest x whose exp(x) is a finite float64.
LOG_FLOAT_MAX = math.log(sys.float_info.max)


def perplexity(loss: float) -> float:
    """``exp(loss)``: the effective number of equally likely next tokens. A cross-entropy is at
    least 0 (perplexity >= 1); one above ~709 nats has no float perplexity."""
    loss = checks.number("loss (a mean cross-entropy in nats)", loss, low=0)
    if loss > LOG_FLOAT_MAX:
        raise LabkitError(
            f"loss {loss:g} nats is too large for a perplexity (exp overflows a float above "
            f"{LOG_FLOAT_MAX:.1f}); accepted: a mean cross-entropy in 0..{LOG_FLOAT_MAX:.1f} nats"
        )
    return math.exp(loss)
