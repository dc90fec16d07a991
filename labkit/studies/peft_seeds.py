"""The multi-seed record behind the PEFT comparisons (``benchmarks/peft_seeds.py``).

One training run per (configuration, seed) takes 10-40 s on a CPU, so the notebooks cannot afford
three seeds of every variant they compare. The benchmark trains each configuration of
:data:`GRID` with three seeds and records which held-out questions each run got right; the
notebooks read that record (:func:`load`), show the spread over seeds (:func:`summary`), and check
that their own live single-seed run lies inside it (:func:`within`). The record stores the
defaults it was made with (:func:`current_defaults`, :func:`grid_as_json`); a test compares them
with today's, so a changed learning rate or data set makes the record stale and the test fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from labkit import REPO_ROOT, LabkitError, unknown

RECORD = REPO_ROOT / "benchmarks" / "peft_seeds.json"

_CONST = {"lr_scheduler_type": "constant"}


def _prompt(lr: float) -> dict[str, Any]:
    return {"num_train_epochs": 15, "learning_rate": lr, **_CONST}


def _ptune(lr: float) -> dict[str, Any]:
    return {"num_train_epochs": 15, "learning_rate": lr, **_CONST}


def _prefix(lr: float) -> dict[str, Any]:
    return {"num_train_epochs": 10, "learning_rate": lr}


#: Per notebook: the (method, training arguments) it compares, three seeds each. Prompt tuning:
#: text init at three learning rates (0.3 is the course default; 0.01 moves the rows by about the
#: same fraction of their scale as 0.3 moves random N(0,1) rows), random init at 0.3, all 15
#: epochs. P-tuning: both encoders at the same 15 epochs, each at its own learning rate. Prefix
#: tuning: with and without projection at the same 10 epochs, each at its own learning rate.
#: Notebook 12 adds LoRA and full fine-tuning at their defaults (its other
#: methods are above). Sized to finish in about an hour on a shared 2-core machine.
GRID: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "08": [("prompt-text", _prompt(lr)) for lr in (0.3, 0.03, 0.01)] + [("prompt", _prompt(0.3))],
    "09": [("p-tuning-mlp", _ptune(0.01)), ("p-tuning-lstm", _ptune(0.03))],
    "10": [("prefix", _prefix(0.1)), ("prefix-projection", _prefix(0.01))],
    "12": [("lora", {"num_train_epochs": 4, "learning_rate": 3e-3})]
    + [("full", {"num_train_epochs": 4, "learning_rate": 1e-3})],
}

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


def studies() -> list[str]:
    """The notebooks with a seed study, e.g. ``['08', '09', '10', '12']``."""
    return list(GRID)


def grid_as_json() -> dict[str, list[list]]:
    """:data:`GRID` as JSON-ready lists (what the record stores)."""
    return {k: [[m, dict(a)] for m, a in v] for k, v in GRID.items()}


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def current_defaults() -> dict[str, Any]:
    """Everything a run depends on besides the grid: peft defaults, Trainer defaults, data."""
    from labkit.data import loaders
    from labkit.training import finetune
    from labkit.tuners import peft_methods

    args = finetune.training_arguments()
    trainer = {k: getattr(args, k) for k in _TRAINER_KEYS}
    trainer = {k: (v.value if hasattr(v, "value") else v) for k, v in trainer.items()}
    return json.loads(
        json.dumps(
            {
                "peft.DEFAULTS": peft_methods.DEFAULTS,
                "peft.TRAIN_ARGS": peft_methods.TRAIN_ARGS,
                "trainer": trainer,
                "chat data sha256": {s: _digest(loaders.load_chat(s)) for s in ("train", "test")},
            }
        )
    )


def load(path: str | Path = RECORD) -> dict:
    """The record written by ``benchmarks/peft_seeds.py`` (a clear error if it is missing)."""
    path = Path(path)
    if not path.exists():
        raise LabkitError(
            f"no seed record at {path.name}; run: python benchmarks/peft_seeds.py --jobs 2"
        )
    return json.loads(path.read_text())


def scores(record: dict, method: str, args: dict, limit: int | None = None) -> list[float]:
    """Exact match per seed of one configuration, on the first ``limit`` held-out questions."""
    found = [r for r in record["runs"] if r["method"] == method and r["args"] == args]
    if not found:
        known = sorted({f"{r['method']} {r['args']}" for r in record["runs"]})
        raise unknown("configuration", f"{method} {args}", known)
    found.sort(key=lambda r: r["seed"])
    return [sum(r["correct"][:limit]) / len(r["correct"][:limit]) for r in found]


def base_score(record: dict, limit: int | None = None) -> float:
    """The untuned base model's exact match on the first ``limit`` held-out questions."""
    correct = record["base_correct"][:limit]
    return sum(correct) / len(correct)


def summary(record: dict, study: str, limit: int | None = None) -> list[dict]:
    """One row per configuration of ``study``: method, lr, epochs, steps, EM per seed, mean,
    min, max, and the mean final training / validation loss."""
    if study not in GRID:
        raise unknown("study", study, studies())
    rows = []
    for method, args in GRID[study]:
        runs = [r for r in record["runs"] if r["method"] == method and r["args"] == args]
        if not runs:
            continue
        em = scores(record, method, args, limit)
        rows.append(
            {
                "method": method,
                "lr": args["learning_rate"],
                "epochs": args["num_train_epochs"],
                "steps": runs[0]["steps"],
                "em": em,
                "mean": sum(em) / len(em),
                "min": min(em),
                "max": max(em),
                "final_loss": sum(r["final_loss"] for r in runs) / len(runs),
                "val_loss": sum(r["val_loss"] for r in runs) / len(runs),
            }
        )
    return rows


def format_summary(rows: list[dict]) -> str:
    """The rows of :func:`summary` as an aligned text table."""
    n = max((len(r["em"]) for r in rows), default=0)
    head = f"{'method':<18}{'lr':>7}{'epochs':>7}{'steps':>6}"
    head += "".join(f"{'seed ' + str(s):>8}" for s in range(n))
    head += f"{'mean':>7}{'spread':>8}{'train loss':>11}{'val loss':>9}"
    lines = [head]
    for r in rows:
        line = f"{r['method']:<18}{r['lr']:>7g}{r['epochs']:>7}{r['steps']:>6}"
        line += "".join(f"{x:>8.2f}" for x in r["em"])
        line += f"{r['mean']:>7.2f}{r['max'] - r['min']:>8.2f}"
        line += f"{r['final_loss']:>11.3f}{r['val_loss']:>9.3f}"
        lines.append(line)
    return "\n".join(lines)


def within(value: float, seeds: list[float], slack: float = 0.0) -> bool:
    """Whether ``value`` lies in [min(seeds) - slack, max(seeds) + slack]."""
    return min(seeds) - slack <= value <= max(seeds) + slack


def gap_exceeds_spread(a: list[float], b: list[float]) -> bool:
    """True when the two configurations' seed ranges do not overlap (a gap larger than noise)."""
    return min(a) > max(b) or min(b) > max(a)


def markdown_table(record: dict, limit: int | None = None) -> str:
    """Every study of the record as one Markdown table (for benchmarks/README.md)."""
    seeds = record["seeds"]
    head = "| notebook | method | lr | epochs | steps | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | mean |", "|---|---|---:|---:|---:|" + "---:|" * (len(seeds) + 1)]
    for study in studies():
        for r in summary(record, study, limit):
            cells = " | ".join(f"{x:.2f}" for x in r["em"])
            lines.append(
                f"| {study} | {r['method']} | {r['lr']:g} | {r['epochs']} | {r['steps']} | "
                f"{cells} | {r['mean']:.2f} |"
            )
    return "\n".join(lines)


def defaults_below(record: dict, min_gain: float) -> list[str]:
    """Course defaults (``TRAIN_ARGS``) that gain less than ``min_gain`` on some seed."""
    from labkit.tuners import peft_methods

    base = base_score(record)
    out = []
    for method, args in peft_methods.TRAIN_ARGS.items():
        runs = [r for r in record["runs"] if r["method"] == method and r["args"] == args]
        if runs and min(scores(record, method, args)) - base < min_gain:
            out.append(method)
    return out
