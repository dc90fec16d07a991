"""One training and evaluation path for the chat task, shared by every PEFT notebook.

- :func:`chat_features` turns ``Human: ... Assistant:`` records into token ids whose labels are
  masked (-100) on the prompt, so the loss is the answer's loss only;
- :func:`train` runs the Hugging Face ``Trainer`` (with its progress bar) on any model, a
  ``PeftModel`` included, with today's ``TrainingArguments`` names (:func:`training_arguments`),
  callbacks and per-epoch evaluation; :func:`make_trainer` is the one place a ``Trainer`` is
  built (forgetting and the Optuna trials use it too);
- :func:`chat_loss`: the answer tokens' loss (:mod:`labkit.training.lm_loss`);
- :func:`generate_answers` / :func:`evaluate_chat` compute the held-out **exact match**: the
  greedy answer, up to the first newline, must equal the reference sentence;
- :func:`side_by_side` shows answers before and after fine-tuning;
- :func:`log_loss_axis` makes a training-loss curve's log axis readable (1-2-5 ticks).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import labkit
from labkit import LabkitError, checks
from labkit.data import loaders
from labkit.training import lm_loss
from labkit.tuners.generation import greedy_answers

IGNORE = -100


def chat_features(tokenizer, rows: list[dict], target: str = "response") -> list[dict]:
    """Token ids for ``prompt + " " + target + </s>`` with the prompt's labels set to -100."""
    if target not in {"response", "short"}:
        raise labkit.unknown("target", target, ("response", "short"))
    if isinstance(rows, str | bytes | dict) or not hasattr(rows, "__iter__"):
        raise LabkitError(
            f"rows must be a list of chat rows, got {type(rows).__name__}; accepted: "
            '[{"prompt": ..., "response": ...}, ...] (loaders.load_chat)'
        )
    feats = []
    for i, row in enumerate(rows):
        for key in ("prompt", target):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                got = "no" if isinstance(row, dict) and key not in row else "a bad"
                raise LabkitError(
                    f"row {i} has {got} {key!r} text; accepted: rows of "
                    f'{{"prompt": str, {target!r}: str}} (loaders.load_chat)'
                )
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + " " + row[target])["input_ids"] + [tokenizer.eos_token_id]
        if full[: len(prompt_ids)] != prompt_ids:
            raise LabkitError("tokenizer splits the prompt differently inside the full text")
        labels = [IGNORE] * len(prompt_ids) + full[len(prompt_ids) :]
        feats.append({"input_ids": full, "labels": labels})
    return feats


@dataclass
class ChatCollator:
    """Right-pads a batch: ``pad_token_id`` for inputs, -100 for labels, 0 in the attention mask."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids, labels, mask = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_token_id] * pad)
            labels.append(b["labels"] + [IGNORE] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


#: The course's CPU-friendly training defaults (the chat task of notebooks 08-13).
COURSE_TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "num_train_epochs": 10,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
    "data_seed": 0,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}


def training_arguments(
    output_dir: str | None = None, *, course_defaults: bool = True, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` with today's names: the course's CPU-friendly defaults
    (:data:`COURSE_TRAINING_DEFAULTS`), or with ``course_defaults=False`` the library's own
    defaults (what a hyperparameter search varies), plus ``overrides``; a fresh temporary
    ``output_dir`` unless given.

    Old tutorials' ``evaluation_strategy`` (deprecated since transformers 4.41), ``no_cuda``,
    ``overwrite_output_dir`` and ``logging_dir`` are refused by transformers 5 (use
    ``eval_strategy``, ``use_cpu``, nothing, and nothing).
    """
    settings: dict[str, Any] = {"output_dir": output_dir or tempfile.mkdtemp(prefix="labkit-run-")}
    if course_defaults:
        settings |= COURSE_TRAINING_DEFAULTS
        # pinned memory only helps host-to-GPU copies; on a CPU torch warns about it every epoch
        settings["dataloader_pin_memory"] = torch.cuda.is_available()
    _check_training_overrides(overrides)
    settings.update(overrides)
    try:
        return TrainingArguments(**settings)
    except (ValueError, TypeError) as err:  # transformers' own checks: one line, not a traceback
        first = " ".join(str(err).split())[:240]
        raise LabkitError(
            f"transformers.TrainingArguments refused these settings: {first}; accepted: the "
            "values its documentation lists"
        ) from None


#: Names old tutorials use that transformers 5 no longer accepts, and what replaces them.
REMOVED_ARGUMENTS = {
    "evaluation_strategy": "use eval_strategy",
    "no_cuda": "use use_cpu",
    "overwrite_output_dir": "drop it (output_dir is a fresh temporary folder here)",
    "logging_dir": "drop it",
}


#: Training arguments the Trainer takes silently although they train nothing or NaNs, with what
#: is accepted: ``(low, above, high_below)`` for numbers (None: no bound), "count" for integers
#: >= 1 (a batch of 0 or 0 accumulation steps fail deep inside torch or the Trainer).
NUMBER_ARGUMENTS: dict[str, tuple[float | None, float | None, float | None]] = {
    "num_train_epochs": (None, 0, None),
    "learning_rate": (0, None, None),
    "weight_decay": (0, None, None),  # NaN makes every weight NaN at the first step
    "max_grad_norm": (0, None, None),
    "adam_epsilon": (None, 0, None),
    "adam_beta1": (0, None, 1),
    "adam_beta2": (0, None, 1),
    "warmup_ratio": (0, None, 1),
}
COUNT_ARGUMENTS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
)


def _check_training_overrides(overrides: dict[str, Any]) -> None:
    """One line for a removed or unknown argument and for values the Trainer would accept
    silently or fail on deep inside (a negative epoch count trains nothing; a NaN learning rate
    or weight decay trains NaNs; a batch of 0 is a torch sampler traceback)."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in overrides:
        if key in REMOVED_ARGUMENTS:
            raise LabkitError(
                f"{key} is no longer a TrainingArguments field (transformers 5 refuses it); "
                f"{REMOVED_ARGUMENTS[key]}"
            )
        if key not in fields:
            raise LabkitError(
                f"unknown training argument {key!r}; accepted: the fields of "
                "transformers.TrainingArguments (num_train_epochs, learning_rate, ...)"
            )
    for key, (low, above, below) in NUMBER_ARGUMENTS.items():
        if overrides.get(key) is None:
            continue
        v = checks.number(key, overrides[key], low=low, above=above)
        if below is not None and v >= below:
            raise LabkitError(f"{key} must be a finite number in [{low}, {below}), got {v!r}")
    for key in COUNT_ARGUMENTS:
        if overrides.get(key) is not None:
            checks.positive(key, overrides[key])
    steps = overrides.get("max_steps", -1)
    if steps != -1 or isinstance(steps, bool):  # -1: train num_train_epochs instead
        checks.positive("max_steps (or -1 for num_train_epochs)", steps)
    for key in ("seed", "data_seed"):
        if overrides.get(key) is not None:
            checks.seed_value(key, overrides[key])


@dataclass
class TrainRun:
    """What :func:`train` measured: the Trainer, seconds, steps, and the logged losses."""

    trainer: Trainer
    seconds: float
    steps: int
    losses: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, self.steps)


def make_trainer(
    model,
    args: TrainingArguments,
    train_dataset,
    eval_dataset=None,
    data_collator=None,
    processing_class=None,
    callbacks: Sequence[TrainerCallback] = (),
    compute_metrics=None,
) -> Trainer:
    """The one place a ``Trainer`` is built (chat fine-tuning, forgetting, the Optuna trials).

    Without progress bars (``disable_tqdm``) the Trainer adds a ``PrinterCallback`` that prints
    every log dict; it is removed, so a quiet run is quiet.
    """
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processing_class,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    return trainer


def train(
    model: PreTrainedModel,
    tokenizer,
    rows: list[dict] | None = None,
    target: str = "response",
    eval_rows: list[dict] | None = None,
    *,
    features: list[dict] | None = None,
    eval_features: list[dict] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **args: Any,
) -> TrainRun:
    """Fine-tune ``model`` on chat ``rows`` (default: the train split) with the HF Trainer.

    ``features``: ready token features (:func:`chat_features`, maybe mixed with other data)
    instead of ``rows``. ``eval_rows`` / ``eval_features``: evaluated after every epoch unless
    ``eval_strategy`` says otherwise. ``callbacks``: ``TrainerCallback`` objects. ``args``
    override :func:`training_arguments` (``num_train_epochs``, ``learning_rate``...). The model
    is left in eval mode.
    """
    if features is None:
        rows = loaders.load_chat("train") if rows is None else rows
        if not isinstance(rows, str) and hasattr(rows, "__len__") and len(rows) == 0:
            raise LabkitError("rows is empty; accepted: a non-empty list of chat rows (or None)")
        features = chat_features(tokenizer, rows, target)
    if eval_rows is not None:
        eval_features = chat_features(tokenizer, eval_rows, target) if eval_rows else None
    if eval_rows is not None or eval_features is not None:
        args.setdefault("eval_strategy", "epoch")
    if not any(p.requires_grad for p in model.parameters()):
        raise LabkitError(
            "every parameter of the model is frozen (requires_grad=False): there is nothing to "
            "train; accepted: a model with trainable parameters (attach a PEFT method, or "
            "unfreeze some layers)"
        )
    trainer = make_trainer(
        model,
        training_arguments(**args),
        features,
        eval_features,
        ChatCollator(tokenizer.pad_token_id),
        tokenizer,
        callbacks,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    model.eval()
    return TrainRun(trainer, seconds, result.global_step, losses)


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 14) -> list[str]:
    """Greedy answers, cut at the first newline, in the order of ``prompts``.

    Prompts of equal token length are generated together as one batch, so no padding is ever
    needed: the answers are the same as one prompt at a time, only faster. Prompt-learning
    methods generate with ``use_cache=False`` (:func:`labkit.tuners.generation.greedy_answers`
    says why). That is faithful for prompt tuning and P-tuning, not for prefix tuning with peft
    0.21 + transformers 5: score a prefix-tuned model with
    :func:`labkit.tuners.peft_methods.greedy_answers` (notebook 10).
    """
    prompts = checks.strings("prompts", prompts)
    max_new_tokens = checks.positive("max_new_tokens", max_new_tokens)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    answers = [""] * len(prompts)
    for idx in groups.values():
        ids = torch.tensor([encoded[i] for i in idx], device=model.device)
        for i, answer in zip(
            idx, greedy_answers(model, tokenizer, ids, None, max_new_tokens), strict=True
        ):
            answers[i] = answer
    return answers


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping spaces."""
    predictions = checks.strings("predictions", predictions)
    references = checks.strings("references", references)
    if len(predictions) != len(references) or not references:
        raise LabkitError(
            f"need equal, non-empty lists; got {len(predictions)} predictions, {len(references)} references"
        )
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


def evaluate_chat(
    model, tokenizer, split: str = "test", target: str = "response", limit: int | None = None
) -> dict:
    """Held-out exact match on a chat split (its first ``limit`` rows when given), with the
    predictions (for side-by-side tables). Decodes with :func:`generate_answers`, so it
    under-reports a prefix-tuned model (see there)."""
    if limit is not None:  # [:-1] would silently drop the last row, [:0] evaluate nothing
        limit = checks.positive("limit (rows to evaluate, or None for all)", limit)
    checks.choice("target", target, ("response", "short"))
    rows = loaders.load_chat(split)[:limit]
    preds = generate_answers(model, tokenizer, [r["prompt"] for r in rows])
    refs = [r[target] for r in rows]
    return {
        "exact_match": exact_match(preds, refs),
        "predictions": preds,
        "references": refs,
        "rows": rows,
    }


def chat_loss(model, tokenizer, split: str = "validation", target: str = "response") -> float:
    """Mean answer-token cross-entropy on a chat split (nats per token; prompts are masked):
    :func:`labkit.training.lm_loss.mean_loss` over the whole split as one batch."""
    feats = chat_features(tokenizer, loaders.load_chat(split), target)
    return lm_loss.mean_loss(model, [ChatCollator(tokenizer.pad_token_id)(feats)])


def _cut(text: str, width: int = 60) -> str:
    """``text`` cut at ``width`` characters, with "…" where it was cut."""
    return text if len(text) <= width else text[:width] + "…"


def side_by_side(rows: list[dict], before: list[str], after: list[str], n: int = 5) -> str:
    """A small text table: question, answer before and after fine-tuning (each cut at 60
    characters, marked by a trailing "…" inside the quotes), and ✓ / ✗: whether the whole
    answer after equals the reference."""
    n = checks.positive("n (rows to show)", n)
    if not len(rows) == len(before) == len(after):
        raise LabkitError(
            f"need one answer before and after per row; got {len(rows)} rows, {len(before)} "
            f"before, {len(after)} after"
        )
    lines = []
    for row, b, a in list(zip(rows, before, after, strict=True))[:n]:
        question = row["prompt"].removeprefix("Human: ").removesuffix("\nAssistant:")
        mark = "✓" if a == row["response"] else "✗"
        lines.append(f"Q: {question}\n   before: {_cut(b)!r}\n   after:  {_cut(a)!r} {mark}")
    return "\n".join(lines)


def log_loss_axis(ax: Any, *curves: Sequence[float]) -> float:
    """Put ``ax``'s y axis (training losses, nats per token) on a log scale a reader can read:
    ticks at 1, 2 and 5 per decade, written as short decimals (0.02, 0.5, 1; not 5x10^-1), and
    the bottom at the 1-2-5 tick below 0.9x the lowest loss of ``curves`` (0.2 at most), so even
    a loss near zero sits above a labelled tick. Returns that bottom. Call it after plotting."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter  # to draw

    losses = [float(x) for curve in curves for x in curve]
    if not losses or not all(math.isfinite(x) and x > 0 for x in losses):
        raise LabkitError(f"log_loss_axis needs positive finite losses (a log axis); got {losses}")
    low = min(0.2, 0.9 * min(losses))
    decade = 10.0 ** math.floor(math.log10(low))
    bottom = next(m * decade for m in (5, 2, 1) if m * decade <= low * (1 + 1e-9))
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return bottom
