"""The multi-seed record behind the PEFT comparisons (``benchmarks/peft_seeds.py``).

One training run per (configuration, seed) takes 10-40 s on a CPU, so the notebooks cannot afford
three seeds of every variant they compare. The benchmark trains each configuration of
:data:`GRID` with three seeds and records which held-out questions each run got right; the
notebooks read that record (:func:`load`, which refuses it when the defaults, the Trainer
settings or the chat data changed since), show the spread over seeds (:func:`summary`), and
check that their own live single-seed run lies inside it (:func:`labkit.studies.study.within`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from labkit import LabkitError, checks, unknown
from labkit.studies import study
from labkit.tuners import peft_methods

MODEL_ID = "zoo-llama"


def _default(method: str, **change: Any) -> tuple[str, dict[str, Any]]:
    """``(method, TRAIN_ARGS[method])`` with ``change`` applied."""
    return method, {**peft_methods.TRAIN_ARGS[method], **change}


#: The peft docs' prompt-tuning recipe (``docs/source/task_guides/prompt_based_methods.md``):
#: AdamW at 3e-2 with linear decay to zero for 50 epochs of a 50-example set in batches of 16,
#: i.e. 200 steps. Here 18 epochs of 11 batches: 198 steps. Not the docs' whole recipe: their
#: ``torch.optim.AdamW`` keeps its default weight decay 0.01 and nothing clips gradients; here
#: weight decay stays the course's 0 and the ``Trainer`` clips the gradient norm at 1.
PEFT_DOCS_PROMPT = {"num_train_epochs": 18, "learning_rate": 3e-2, "lr_scheduler_type": "linear"}

#: Per notebook: the (method, training arguments[, attach options]) it compares, three seeds
#: each, from the course defaults (``peft_methods.TRAIN_ARGS``). Prompt tuning: text init at the
#: default learning rate (0.3) and at 0.03 and 0.01 (the two bracket the rate that moves the
#: text rows by the fraction of their RMS that 0.3 moves random N(0,1) rows: notebook 08,
#: section 3, computes it from the rows), random init at the default, the peft
#: docs' recipe, and the text init rescaled to the random rows' RMS (``init_rms=1``) at 0.3: the
#: same relative step as random, only the direction differs. P-tuning: both encoders at the MLP's
#: 15 epochs, each at its own learning rate (the LSTM's default is 20 epochs: see "defaults").
#: Prefix tuning: with and without projection at their defaults, and each at the other's learning
#: rate. Notebook 12 adds LoRA and full fine-tuning at their defaults (its other methods are above).
GRID: dict[str, list[tuple]] = {
    "08": [_default("prompt-text")]
    + [_default("prompt-text", learning_rate=lr) for lr in (0.03, 0.01)]
    + [_default("prompt")]
    + [("prompt-text", PEFT_DOCS_PROMPT)]
    + [(*_default("prompt-text"), {"init_rms": 1.0})],
    "09": [
        _default("p-tuning-mlp"),
        _default(
            "p-tuning-lstm",
            num_train_epochs=peft_methods.TRAIN_ARGS["p-tuning-mlp"]["num_train_epochs"],
        ),
    ],
    "10": [
        _default("prefix"),
        _default("prefix-projection"),
        _default(
            "prefix", learning_rate=peft_methods.TRAIN_ARGS["prefix-projection"]["learning_rate"]
        ),
        _default(
            "prefix-projection", learning_rate=peft_methods.TRAIN_ARGS["prefix"]["learning_rate"]
        ),
    ],
    "12": [_default("lora"), _default("full")],
}
#: "defaults": every course default no notebook compares (P-tuning's LSTM at its 20 epochs), so
#: that :func:`defaults_below` judges every entry of ``TRAIN_ARGS``.
_COMPARED = [config for configs in GRID.values() for config in configs]
GRID["defaults"] = [_default(m) for m in peft_methods.TRAIN_ARGS if _default(m) not in _COMPARED]


def _entry(config: tuple) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """``(method, args, attach options or None)`` of a :data:`GRID` entry."""
    method, args, *rest = config
    return method, args, (rest[0] if rest else None)


#: Methods whose exact match is decoded with the model's own forward pass
#: (``peft_methods.greedy_answers``): for prefix tuning ``generate()`` is not faithful on this
#: stack, cached or not (notebook 10, section 6). Every other method uses
#: ``finetune.generate_answers``, which equals the forward-pass decoding for them.
FORWARD_DECODED = ("prefix", "prefix-projection")


def _point(group: str, config: tuple) -> dict[str, Any]:
    method, args, options = _entry(config)
    point = {"group": group, "method": method, "args": args}
    if method in FORWARD_DECODED:
        point["decode"] = "forward"
    return point if options is None else {**point, "attach": options}


def _runs(record: dict, method: str, args: dict, attach: dict | None = None) -> list[dict]:
    """The recorded runs of one configuration; ``attach`` must match too (a run made with
    ``init_rms`` is not a run of the plain text init)."""
    found = study.runs_of(record, {"method": method, "args": args})
    return [r for r in found if r.get("attach") == attach]


def label(method: str, attach: dict | None = None) -> str:
    """The name a table shows for a configuration: the method, plus its attach options."""
    extra = ", ".join(f"{k} {v:g}" for k, v in (attach or {}).items())
    return f"{method} ({extra})" if extra else method


#: Trainer settings every run shares (from ``labkit.training.finetune.training_arguments``).
_TRAINER_KEYS = (
    "per_device_train_batch_size",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
)


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def settings() -> dict[str, Any]:
    """Everything a run depends on besides the grid: peft defaults, Trainer defaults, data."""
    from labkit.data import loaders
    from labkit.training import finetune

    args = finetune.training_arguments()
    trainer = {k: getattr(args, k) for k in _TRAINER_KEYS}
    return {
        "peft_methods.DEFAULTS": peft_methods.DEFAULTS,
        "peft_methods.TRAIN_ARGS": peft_methods.TRAIN_ARGS,
        "trainer": {k: (v.value if hasattr(v, "value") else v) for k, v in trainer.items()},
        "chat data sha256": {s: _digest(loaders.load_chat(s)) for s in ("train", "test")},
    }


def _correct(model, tok, decode: str = "generate") -> list[int]:
    """1 per held-out question (all 84) the model answers exactly, else 0; ``decode="forward"``
    decodes with the model's own forward pass (``peft_methods.greedy_answers``)."""
    from labkit.data import loaders
    from labkit.training import finetune

    rows = loaders.load_chat("test")
    prompts = [r["prompt"] for r in rows]
    if decode == "forward":
        predictions = peft_methods.greedy_answers(model, tok, prompts)
    else:
        predictions = finetune.generate_answers(model, tok, prompts)
    return [int(p.strip() == r["response"].strip()) for p, r in zip(predictions, rows, strict=True)]


def _run(point: study.Point, seed: int) -> dict[str, Any]:
    """One training run of ``point`` (its method and training arguments) with ``seed``."""
    from labkit.models import zoo
    from labkit.training import finetune

    tok = zoo.load_tokenizer(MODEL_ID)
    model = peft_methods.attach(MODEL_ID, point["method"], seed=seed, **point.get("attach", {}))
    result = finetune.train(
        model, tok, seed=seed, data_seed=seed, disable_tqdm=True, **point["args"]
    )
    return {
        "correct": _correct(model, tok, point.get("decode", "generate")),
        "final_loss": result.losses[-1],
        "val_loss": finetune.chat_loss(model, tok, "validation"),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
    }


def _base_correct() -> list[int]:
    """The untuned base model's answers (the record's ``baseline``)."""
    from labkit.models import zoo

    tok = zoo.load_tokenizer(MODEL_ID)
    return _correct(zoo.load_model(MODEL_ID), tok)


STUDY = study.Study(
    name="peft_seeds",
    points=tuple(_point(g, c) for g, configs in GRID.items() for c in configs),
    seeds=(0, 1, 2),
    run=_run,
    settings=settings,
    baseline=_base_correct,
)
load = STUDY.load


def scores(
    record: dict,
    method: str,
    args: dict,
    limit: int | None = None,
    attach: dict | None = None,
    questions: list[int] | None = None,
) -> list[float]:
    """Exact match per seed of one configuration, on the first ``limit`` held-out questions, or
    on the held-out questions numbered ``questions`` (from 0, as in ``load_chat("test")``)."""
    limit = study.question_limit(limit)
    found = _runs(record, method, args, attach)
    if not found:
        known = sorted(
            {f"{label(r['method'], r.get('attach'))} {r['args']}" for r in record["runs"]}
        )
        raise unknown("configuration", f"{label(method, attach)} {args}", known)
    if questions is None:
        return [sum(r["correct"][:limit]) / len(r["correct"][:limit]) for r in found]
    n = len(found[0]["correct"])
    numbered = all(type(i) is int and 0 <= i < n for i in questions)  # no bools, no floats
    if limit is not None or not questions or not numbered:
        raise LabkitError(
            f"questions must be a non-empty list of question numbers 0..{n - 1} (and no limit), "
            f"got {questions!r} with limit {limit!r}"
        )
    return [sum(r["correct"][i] for i in questions) / len(questions) for r in found]


def base_score(record: dict, limit: int | None = None) -> float:
    """The untuned base model's exact match on the first ``limit`` held-out questions."""
    limit = study.question_limit(limit)
    correct = record["baseline"][:limit]
    return sum(correct) / len(correct)


def summary(record: dict, group: str, limit: int | None = None) -> list[dict]:
    """One row per configuration of ``group`` (a notebook, or "defaults"): method (``name`` adds
    its attach options), lr, schedule, epochs, steps, EM per seed, mean, min, max, the mean
    final training / validation loss, and the validation loss per seed (``val_losses``: what
    still separates two configurations whose exact match is at the ceiling)."""
    if group not in GRID:
        raise unknown("group", group, GRID)
    rows = []
    for config in GRID[group]:
        method, args, attach = _entry(config)
        em = study.spread(scores(record, method, args, limit, attach))
        runs = _runs(record, method, args, attach)
        losses = [study.spread([r[k] for r in runs]).mean for k in ("final_loss", "val_loss")]
        rows.append(
            {
                "method": method,
                "attach": attach,
                "name": label(method, attach),
                "lr": args["learning_rate"],
                "schedule": args.get("lr_scheduler_type", "linear"),
                "epochs": args["num_train_epochs"],
                "steps": runs[0]["steps"],
                "em": list(em.values),
                "mean": em.mean,
                "min": em.min,
                "max": em.max,
                "final_loss": losses[0],
                "val_loss": losses[1],
                "val_losses": [r["val_loss"] for r in runs],
            }
        )
    return rows


def format_summary(rows: list[dict]) -> str:
    """The rows of :func:`summary` as an aligned text table."""
    n = max((len(r["em"]) for r in rows), default=0)
    width = max([18] + [len(r["name"]) + 1 for r in rows])
    head = f"{'method':<{width}}{'lr':>7}{'schedule':>9}{'epochs':>7}{'steps':>6}"
    head += "".join(f"{'seed ' + str(s):>8}" for s in range(n))
    head += f"{'mean':>7}{'spread':>8}{'train loss':>11}{'val loss':>9}"
    lines = [head]
    for r in rows:
        line = f"{r['name']:<{width}}{r['lr']:>7g}{r['schedule']:>9}{r['epochs']:>7}{r['steps']:>6}"
        line += "".join(f"{x:>8.2f}" for x in r["em"])
        line += f"{r['mean']:>7.2f}{r['max'] - r['min']:>8.2f}"
        line += f"{r['final_loss']:>11.3f}{r['val_loss']:>9.3f}"
        lines.append(line)
    return "\n".join(lines)


def markdown_table(record: dict, limit: int | None = None) -> str:
    """Every group of the record as one Markdown table (for benchmarks/README.md)."""
    seeds = record["settings"]["seeds"]
    head = "| group | method | lr | epochs | steps | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | mean |", "|---|---|---:|---:|---:|" + "---:|" * (len(seeds) + 1)]
    for group in GRID:
        for r in summary(record, group, limit):
            cells = " | ".join(f"{x:.2f}" for x in r["em"])
            lines.append(
                f"| {group} | {r['name']} | {r['lr']:g} | {r['epochs']} | {r['steps']} | "
                f"{cells} | {r['mean']:.2f} |"
            )
    return "\n".join(lines)


def defaults_below(record: dict, min_gain: float) -> list[str]:
    """Course defaults (``TRAIN_ARGS``) that gain less than ``min_gain`` on some seed.

    Every default must have runs in ``record``; one without is an error, not a pass.
    """
    min_gain = checks.number("min_gain", min_gain)  # NaN would let every default pass
    base = base_score(record)
    out = []
    for method, args in peft_methods.TRAIN_ARGS.items():
        if not _runs(record, method, args):
            raise LabkitError(
                f"the record has no runs of the course default {method} {args}; "
                f"re-make it with {STUDY.rerun} --resume"
            )
        if min(scores(record, method, args)) - base < min_gain:
            out.append(method)
    return out
