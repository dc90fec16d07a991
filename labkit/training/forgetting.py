"""Catastrophic forgetting: what fine-tuning costs the model in what it knew before.

The zoo Llama learned the tiny world's facts from stories (``data/corpus``); the chat task
teaches a ``Human: ... Assistant: ...`` format. This module measures, after every epoch of
fine-tuning, both sides:

- the **task**: answer loss on the chat validation split and exact match on held-out questions
  (:func:`labkit.training.finetune.chat_loss` / :func:`labkit.training.finetune.evaluate_chat`);
- what the model **knew before**: its loss on held-out corpus stories
  (:func:`labkit.training.lm_loss.causal_lm_loss`) and a **probe** (:func:`probe_items`): cloze
  sentences in the corpus's own story style ("Every morning the otter left the" -> "river"),
  about facts the chat task never fine-tunes on, plus counting runs (which can end on a number
  whose successor the chat train split asks: not all unseen; replayed corpus stories can state
  the clozed facts: :func:`rehearsed`). The probe is scored by
  greedy exact match (:func:`probe_accuracy`): an item is right when every answer token is the
  model's argmax given the prompt and the answer's earlier tokens (= greedy decoding).

:func:`train` runs the Hugging Face ``Trainer`` with a :class:`Tracker` callback that records
these after each epoch, optionally with **replay** (a fraction of corpus stories mixed into the
fine-tuning data, :func:`replay_features`) and early stopping on the validation loss.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from labkit import LabkitError, checks, unknown
from labkit.data import generator, loaders
from labkit.training import finetune, lm_loss

#: Probe sentences per fact kind, copied from the corpus's story templates (``datasets``): the
#: prompt ends just before the answer word(s).
PROBE_TEMPLATES: dict[str, list[str]] = {
    "home": ["Every morning the {e} left the", "The {e} was happy in the"],
    "colour": ["{n} painted a {e}, and the paint was", "{n} looked at the {e}. It was"],
    "opposite": ["If it is not {e}, it may be", "{n} said that {e} and"],
    "next": ["After {e} comes", "{n} counted {e},"],
}
KINDS = tuple(PROBE_TEMPLATES) + ("count",)


@dataclass(frozen=True)
class ProbeItem:
    """One cloze: ``prompt`` + ``" " + answer`` is a sentence the corpus could contain."""

    prompt: str
    answer: str
    kind: str
    #: the fact's entity ("fox", "one"); "" for a counting run
    entity: str = ""


def unseen_facts() -> list[dict]:
    """Facts whose chat questions are only in the validation / test splits (never fine-tuned)."""
    seen = {(r["intent"], r["entity"]) for r in loaders.load_chat("train")}
    return [f for f in generator.facts() if (f["intent"], f["entity"]) not in seen]


def probe_items(per_fact: int = 1, counts: int = 16, seed: int = 0) -> list[ProbeItem]:
    """Cloze items about the facts fine-tuning never sees, plus ``counts`` counting runs.

    ``per_fact`` (1 or 2) story templates per fact; counting runs read like the corpus's
    "Mia counted: four, five, six," -> "seven". Counting runs are not all unseen: a run ending
    on ``x`` where ``("next", x)`` is in the chat train split probes a fine-tuned fact in story
    form (notebook 16 prints how many).
    """
    if isinstance(per_fact, bool) or per_fact not in (1, 2):
        raise LabkitError(f"per_fact must be 1 or 2 (story templates per fact), got {per_fact!r}")
    counts = checks.count("counts (counting runs)", counts)
    rng = random.Random(checks.seed_value("seed", seed))
    items = []
    for f in unseen_facts():
        templates = PROBE_TEMPLATES[f["intent"]]
        for t in rng.sample(templates, per_fact):
            prompt = t.format(e=f["entity"], n=rng.choice(generator.NAMES))
            if f["intent"] == "opposite" and t.startswith("If"):
                prompt = prompt[0].upper() + prompt[1:]
            items.append(ProbeItem(prompt, f["answer"], f["intent"], f["entity"]))
    nums = generator.NUMBERS
    for _ in range(counts):
        start, length = rng.randrange(0, len(nums) - 5), rng.randint(3, 4)
        run = nums[start : start + length]
        prompt = f"{rng.choice(generator.NAMES)} counted: {', '.join(run)},"
        items.append(ProbeItem(prompt, nums[start + length], "count"))
    return items


def cloze_items(rows: list[dict], per_fact: int = 1, seed: int = 0) -> list[ProbeItem]:
    """The probe's clozes (no counting runs) about exactly the facts the chat ``rows`` ask.

    Every kind of question has its cloze, number questions included ("Which number follows
    one?" <-> "After one comes" -> "two"). A row whose fact the chat train split fine-tunes on
    has no cloze and raises: this probe only covers held-out facts.
    """
    if not isinstance(rows, (list, tuple)):
        raise LabkitError(f"rows is {type(rows).__name__}; accepted: a list of chat rows")
    bad = next(
        (
            i
            for i, r in enumerate(rows)
            if not (isinstance(r, dict) and {"intent", "entity"} <= r.keys())
        ),
        None,
    )
    if bad is not None:
        raise LabkitError(
            f"rows[{bad}] is not a chat row; accepted: a list of rows from loaders.load_chat()"
        )
    asked = {(r["intent"], r["entity"]) for r in rows}
    if not asked:
        raise LabkitError("no chat rows; accepted: a non-empty list of chat rows")
    items = [
        it
        for it in probe_items(per_fact=per_fact, counts=0, seed=seed)
        if (it.kind, it.entity) in asked
    ]
    missing = asked - {(it.kind, it.entity) for it in items}
    if missing:
        raise LabkitError(
            f"{len(missing)} asked facts have no cloze, e.g. {sorted(missing)[0]}: they are in the "
            "chat train split; accepted: rows of the validation / test splits"
        )
    return items


def _encode(tokenizer, item: ProbeItem) -> tuple[list[int], int]:
    prompt_ids = tokenizer(item.prompt)["input_ids"]
    full = tokenizer(item.prompt + " " + item.answer)["input_ids"]
    if full[: len(prompt_ids)] != prompt_ids:
        raise LabkitError(f"tokenizer splits the prompt differently inside {item.prompt!r}")
    return full, len(prompt_ids)


@torch.no_grad()
def probe_accuracy(model: nn.Module, tokenizer, items: list[ProbeItem]) -> dict[str, Any]:
    """Greedy exact match and per-token accuracy on the probe, overall and per kind.

    One teacher-forced forward pass: an item is exact when every answer token is the argmax at
    its position, which is exactly when greedy decoding would write the answer.
    """
    if not items:
        raise LabkitError("no probe items; accepted: a non-empty list from probe_items()")
    bad = next((i for i, it in enumerate(items) if not isinstance(it, ProbeItem)), None)
    if bad is not None:
        raise LabkitError(
            f"item {bad} is {type(items[bad]).__name__}, not a ProbeItem; accepted: a list "
            "from probe_items()"
        )
    encoded = [_encode(tokenizer, it) for it in items]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in encoded])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in encoded])
    device = next(model.parameters()).device
    with lm_loss.evaluating(model):
        logits = lm_loss.aligned_logits(model, ids.to(device), mask.to(device))
    pred = logits.argmax(-1).cpu()
    exact, tokens_right, tokens = [], 0, 0
    for row, (x, n_prompt) in enumerate(encoded):
        hits = [int(pred[row, p - 1]) == x[p] for p in range(n_prompt, len(x))]
        exact.append(all(hits))
        tokens_right += sum(hits)
        tokens += len(hits)
    per_kind = {
        k: sum(e for e, it in zip(exact, items, strict=True) if it.kind == k)
        / sum(it.kind == k for it in items)
        for k in KINDS
        if any(it.kind == k for it in items)
    }
    return {
        "exact_match": sum(exact) / len(exact),
        "token_accuracy": tokens_right / tokens,
        "per_kind": per_kind,
        "exact": exact,
    }


def corpus_texts(n: int = 48, split: str = "validation") -> list[str]:
    """The first ``n`` held-out corpus stories (the model never trained on them)."""
    n = checks.positive("n (stories)", n)  # [:-1] would silently drop the last story instead
    return loaders.load_corpus(split)[:n]


@dataclass
class Probe:
    """What is measured after each epoch: held-out stories, probe items, the chat split."""

    tokenizer: Any
    items: list[ProbeItem]
    texts: list[str]
    chat_limit: int | None = 42
    chat_split: str = "test"
    max_length: int = 128

    def measure(self, model: nn.Module) -> dict[str, float]:
        """Task (chat validation loss) and forgetting (corpus loss, probe) in one dict."""
        tok = self.tokenizer
        probe = probe_accuracy(model, tok, self.items)
        row = {
            "corpus_loss": lm_loss.causal_lm_loss(model, tok, self.texts, self.max_length),
            "probe_em": probe["exact_match"],
            "probe_token_acc": probe["token_accuracy"],
            "chat_loss": finetune.chat_loss(model, tok, "validation"),
        }
        model.eval()
        return row

    def chat_exact_match(self, model: nn.Module) -> float:
        """Held-out exact match on ``chat_limit`` questions of ``chat_split`` (greedy answers)."""
        result = finetune.evaluate_chat(
            model, self.tokenizer, self.chat_split, limit=self.chat_limit
        )
        return result["exact_match"]

    @classmethod
    def default(cls, tokenizer, fast: bool = True) -> Probe:
        """The course probe (:data:`PROBE_SETTINGS`): 48 held-out stories, one cloze per unseen
        fact + 16 counting runs, 42 held-out chat questions (``fast=False``: 200 stories, two
        clozes per fact + 32 runs, all 84 questions)."""
        kw = PROBE_SETTINGS["fast" if fast else "full"]
        return cls(
            tokenizer,
            probe_items(per_fact=kw["per_fact"], counts=kw["counts"]),
            corpus_texts(kw["stories"]),
            chat_limit=kw["chat_limit"],
        )


#: Probe sizes for ``Probe.default(tok, fast)``; the seed record stores the ones it used.
PROBE_SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {"stories": 48, "per_fact": 1, "counts": 16, "chat_limit": 42},
    "full": {"stories": 200, "per_fact": 2, "counts": 32, "chat_limit": None},
}


class Tracker(TrainerCallback):
    """Measures ``probe`` before training and after every epoch; ``history`` holds the rows.

    When the Trainer evaluates (``eval_strategy="epoch"``), its ``eval_loss`` joins the row.
    """

    def __init__(self, probe: Probe):
        self.probe = probe
        self.history: list[dict[str, float]] = []

    def _record(self, model, epoch: float) -> None:
        was_training = model.training
        self.history.append({"epoch": round(epoch, 3), **self.probe.measure(model)})
        model.train(was_training)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history:
            self._record(model, 0.0)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._record(model, state.epoch)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics and self.history:
            self.history[-1]["eval_loss"] = float(metrics["eval_loss"])


def replay_features(tokenizer, n: int, seed: int = 0, max_tokens: int = 64) -> list[dict]:
    """``n`` pretraining stories (``corpus/train.txt``) as training features, loss on every token.

    Replay mixes them into the chat data so fine-tuning keeps practising the old distribution.
    """
    n, max_tokens = checks.count("n (replay stories)", n), checks.positive("max_tokens", max_tokens)
    if max_tokens < 2:
        raise LabkitError(f"max_tokens must be >= 2 (a story to predict), got {max_tokens}")
    corpus = loaders.load_corpus("train")
    if n > len(corpus):
        raise LabkitError(f"n={n} replay stories asked for, the corpus has {len(corpus)}")
    stories = random.Random(checks.seed_value("seed", seed)).sample(corpus, n)
    feats = []
    for s in stories:
        ids = tokenizer(s)["input_ids"][:max_tokens]
        feats.append({"input_ids": ids, "labels": list(ids)})
    return feats


def rehearsed(texts: list[str], items: list[ProbeItem]) -> dict[str, list[ProbeItem]]:
    """Which probe clozes ``texts`` (e.g. the replayed stories) rehearse: ``"stated"``, the
    clozes whose entity and answer share a sentence of some text (the fact is stated there),
    and ``"verbatim"``, those whose prompt + answer appears word for word. Counting runs are
    skipped. A probe item the training text states is not an unseen fact."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise LabkitError("texts must be a list of strings (e.g. the replayed stories)")
    sentences = [s for t in texts for s in re.split(r"(?<=[.!?\"])\s+", t)]

    def said(word: str, sentence: str) -> bool:  # "four" is not said by "twenty four"
        return re.search(rf"(?<!twenty )\b{re.escape(word)}\b", sentence) is not None

    clozes = [it for it in items if it.kind != "count"]
    return {
        "stated": [
            it for it in clozes if any(said(it.entity, s) and said(it.answer, s) for s in sentences)
        ],
        "verbatim": [it for it in clozes if any(f"{it.prompt} {it.answer}" in t for t in texts)],
    }


def replay_count(n_task: int, fraction: float) -> int:
    """How many replay examples make ``fraction`` of a mix with ``n_task`` task examples."""
    n_task = checks.count("n_task (task examples)", n_task)
    fraction = checks.number("replay fraction", fraction, low=0)
    if fraction >= 1:
        raise LabkitError(f"replay fraction must be in [0, 1), got {fraction!r}")
    return round(n_task * fraction / (1 - fraction))


@dataclass
class Run:
    """One tracked fine-tuning run: per-epoch rows, final chat exact match, Trainer, seconds."""

    label: str
    history: list[dict[str, float]]
    trainer: Trainer
    seconds: float
    chat_em: float = float("nan")
    best: dict[str, float] | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> list[dict[str, float]]:
        """The rows after each epoch (row 0 is the model before fine-tuning)."""
        return self.history

    def record(self) -> dict[str, Any]:
        """What the seed record keeps of a run (JSON-friendly)."""
        return {
            "label": self.label,
            "seconds": round(self.seconds, 1),
            "chat_em": self.chat_em,
            "history": self.history,
            "best": self.best,
        }


def train(
    model: nn.Module,
    tokenizer,
    probe: Probe,
    *,
    label: str = "",
    replay: float = 0.0,
    keep_best: bool = False,
    patience: int | None = None,
    **args: Any,
) -> Run:
    """Fine-tune on the chat train split, measuring ``probe`` before and after every epoch.

    ``replay``: fraction of the training examples that are corpus stories (0 = none).
    ``keep_best``: the Trainer evaluates the chat validation loss every epoch, saves a checkpoint
    per epoch (``save_total_limit=1`` keeps only the best and the latest) and reloads the best
    at the end (``load_best_model_at_end``, ``metric_for_best_model="eval_loss"``); the reloaded
    model is measured into ``run.best``. ``patience`` (with ``keep_best``) adds an
    ``EarlyStoppingCallback`` that stops after that many epochs without improvement. The chat
    exact match is measured once, on the final (or reloaded best) model. ``args`` override
    :func:`labkit.training.finetune.training_arguments`.
    """
    from transformers import EarlyStoppingCallback

    feats = finetune.chat_features(tokenizer, loaders.load_chat("train"))
    if replay:
        n = replay_count(len(feats), replay)
        feats = feats + replay_features(tokenizer, n, seed=args.get("seed", 0))
    tracker = Tracker(probe)
    callbacks: list[TrainerCallback] = [tracker]
    eval_feats = None
    if patience is not None and not keep_best:
        raise LabkitError("patience needs keep_best=True (early stopping reloads the best epoch)")
    if keep_best:
        eval_feats = finetune.chat_features(tokenizer, loaders.load_chat("validation"))
        args = {
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "save_total_limit": 1,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
            **args,
        }
        if patience is not None:
            if patience < 1:
                raise LabkitError(f"patience is a number of epochs (>= 1), got {patience}")
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    args.setdefault("disable_tqdm", True)
    fit = finetune.train(
        model, tokenizer, features=feats, eval_features=eval_feats, callbacks=callbacks, **args
    )
    trainer = fit.trainer
    best = None
    if keep_best:
        steps_per_epoch = trainer.state.max_steps / trainer.args.num_train_epochs
        best_epoch = round(trainer.state.best_global_step / steps_per_epoch, 3)
        best = {"epoch": best_epoch, **probe.measure(trainer.model)}
    chat_em = probe.chat_exact_match(trainer.model) if probe.chat_limit != 0 else float("nan")
    return Run(
        label=label,
        history=tracker.history,
        trainer=trainer,
        seconds=fit.seconds,
        chat_em=chat_em,
        best=best,
        losses=fit.losses,
    )


def forgetting(history: list[dict[str, float]], key: str = "corpus_loss") -> float:
    """How much worse the last row is than the first on ``key`` (loss up or probe down > 0)."""
    if not history or key not in history[0]:
        raise unknown("metric", key, sorted(history[0]) if history else [])
    first, last = history[0][key], history[-1][key]
    return last - first if key.endswith("loss") else first - last


#: The per-epoch metrics a tracked row holds.
METRICS = ("corpus_loss", "probe_em", "probe_token_acc", "chat_loss")


@torch.no_grad()
def loss_after_marker(
    model: nn.Module, tokenizer, texts: list[str], marker: str = ".", max_length: int = 128
) -> dict[str, float]:
    """Where the corpus loss comes from: tokens right after ``marker`` (a sentence end) vs the rest.

    Returns the mean loss (nats/token) over all tokens, over tokens that follow ``marker`` and
    over the others, the share of tokens that follow it, and the mean probability the model gives
    to end-of-text there (a chat model learns to stop after one sentence).
    """
    marker_id = tokenizer.convert_tokens_to_ids(marker)
    if marker_id is None or marker_id == tokenizer.unk_token_id:
        raise LabkitError(f"marker {marker!r} is not one token; accepted: e.g. '.', ','")
    nll_all, n_all = 0.0, 0
    after_nll, rest_nll, p_end = [], [], []
    with lm_loss.evaluating(model):
        for batch in lm_loss.text_batches(tokenizer, texts, max_length):
            logp, target = lm_loss.log_probs(model, batch)
            nll, n = lm_loss.summed_nll(logp, target)
            nll_all, n_all = nll_all + nll, n_all + n
            valid = target != lm_loss.IGNORE
            after = valid & (batch["input_ids"][:, :-1].to(target.device) == marker_id)
            token_nll = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
            after_nll.append(token_nll[after])
            rest_nll.append(token_nll[valid & ~after])
            p_end.append(logp[..., tokenizer.eos_token_id].exp()[after])
    after_nll, rest_nll = torch.cat(after_nll), torch.cat(rest_nll)
    return {
        "all": nll_all / n_all,
        "after": float(after_nll.mean()),
        "rest": float(rest_nll.mean()),
        "share_after": len(after_nll) / n_all,
        "p_end_after": float(torch.cat(p_end).mean()),
    }
