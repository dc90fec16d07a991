"""The runs of notebook 16 and their multi-seed record (``benchmarks/forgetting_seeds.py``).

:data:`RUNS` are the fine-tuning runs the notebook compares (full fine-tuning, LoRA, prompt
tuning, a lower learning rate, replay, LoRA ranks), each trained for :data:`EPOCHS` epochs by
:func:`run` with the per-epoch tracking of :mod:`labkit.training.forgetting`. The notebook trains
seed 0 live; :data:`STUDY` records seeds 0, 1, 2 (:mod:`labkit.studies.study`), and
:func:`epoch_bands` / :func:`summary` read the record per epoch or after the last one, and
:func:`at_task_loss` compares runs at the same chat validation loss (like with like: runs that
differ in learning rate as well as method learn different amounts).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from labkit import LabkitError, unknown
from labkit.studies import study
from labkit.training import forgetting as fg
from labkit.tuners import peft_methods

#: Epochs per run: the same for every method, so curves compare like with like.
EPOCHS = 5


def _default(method: str, **change: Any) -> dict[str, Any]:
    """The course's training arguments of ``method`` (``TRAIN_ARGS``) but its epochs, changed."""
    args = {k: v for k, v in peft_methods.TRAIN_ARGS[method].items() if k != "num_train_epochs"}
    return {"method": method, **args, **change}


#: The runs the notebook and the seed record compare. ``method`` is a ``peft_methods`` method;
#: learning rates (and schedules) are the course defaults (``peft_methods.TRAIN_ARGS``) except
#: "full lr 1e-4"; ``peft`` overrides the adapter config; ``replay`` and ``keep_best`` go to
#: :func:`labkit.training.forgetting.train`.
RUNS: dict[str, dict[str, Any]] = {
    "full": _default("full", keep_best=True),
    "lora": _default("lora"),
    "prompt": _default("prompt"),
    "full lr 1e-4": _default("full", learning_rate=1e-4),
    "full + 25% replay": _default("full", replay=0.25),
    "lora r=1": _default("lora", peft={"r": 1, "lora_alpha": 2}),
    "lora r=64": _default("lora", peft={"r": 64, "lora_alpha": 128}),
}


#: The runs notebook 16 trains live: its later sections read every one of them.
LIVE = ("full", "lora", "prompt", "full lr 1e-4", "full + 25% replay")


def check_live(epochs: Any, names: Any) -> None:
    """Refuse notebook 16's parameters that its sections cannot honour, with one line each.

    ``epochs`` must be :data:`EPOCHS` (the sections read the record epoch by epoch next to the
    live runs); ``names`` may add runs of :data:`RUNS` to :data:`LIVE` but must keep all of them.
    """
    if epochs != EPOCHS:
        raise LabkitError(
            f"EPOCHS = {epochs!r} refused: notebook 16 compares its live runs epoch by epoch with "
            f"the record's {EPOCHS} epochs; keep {EPOCHS} (for another length call "
            "fs.run(name, tok, probe, num_train_epochs=N) yourself)"
        )
    for name in names:
        if name not in RUNS:
            raise unknown("run", name, RUNS)
    if missing := [n for n in LIVE if n not in names]:
        raise LabkitError(
            f"RUNS_LIVE lacks {', '.join(map(repr, missing))}: the later sections read each of "
            f"{', '.join(map(repr, LIVE))}; you may add other runs of fs.RUNS, not drop these"
        )


def settings() -> dict[str, Any]:
    """Everything the record depends on besides its points and seeds: epochs, runs, probe."""
    return {"epochs": EPOCHS, "runs": RUNS, "probe": fg.PROBE_SETTINGS["fast"]}


def run(
    name: str, tokenizer, probe: fg.Probe, seed: int = 0, model_id: str = "zoo-llama", **extra: Any
) -> fg.Run:
    """Train the run ``name`` of :data:`RUNS` for :data:`EPOCHS` epochs with ``seed``.

    The seed sets the adapter's initialisation, the data order and the replay sample.
    ``extra`` overrides the run's settings (e.g. ``num_train_epochs``).
    """
    if name not in RUNS:
        raise unknown("run", name, RUNS)
    spec = {**RUNS[name], **extra}
    method, overrides = spec.pop("method"), spec.pop("peft", {})
    model = peft_methods.attach(model_id, method, seed=seed, **overrides)
    spec.setdefault("num_train_epochs", EPOCHS)
    return fg.train(model, tokenizer, probe, label=name, seed=seed, data_seed=seed, **spec)


def _run(point: study.Point, seed: int) -> dict[str, Any]:
    """One run of the record: :func:`run` with the course probe (``fast``)."""
    from labkit.models import zoo

    tok = zoo.load_tokenizer("zoo-llama")
    return run(point["run"], tok, fg.Probe.default(tok), seed=seed).record()


STUDY = study.Study(
    name="forgetting_seeds",
    points=tuple({"run": name} for name in RUNS),
    seeds=(0, 1, 2),
    run=_run,
    settings=settings,
)
load = STUDY.load


def summary(record: dict[str, Any], row: str = "last") -> dict[str, dict[str, Any]]:
    """Per run of the record: (mean, half the range) over seeds of the final metrics.

    ``row``: ``"last"`` (after the last epoch) or ``"best"`` (the epoch ``load_best_model_at_end``
    reloaded; runs without ``keep_best`` are left out). ``before`` is the untuned model's loss.
    """
    if row not in ("last", "best"):
        raise unknown("row", row, ["last", "best"])
    out = {}
    for point in record["settings"]["points"]:
        runs = study.runs_of(record, point)
        if row == "best":
            runs = [r for r in runs if r.get("best")]
        if not runs:
            continue
        rows = [r["best"] if row == "best" else r["history"][-1] for r in runs]
        values = {"epoch": [x["epoch"] for x in rows], "chat_em": [r["chat_em"] for r in runs]}
        values |= {k: [x[k] for x in rows] for k in fg.METRICS}
        out[point["run"]] = {
            "before": runs[0]["history"][0]["corpus_loss"],
            "seeds": len(runs),
            **{k: _mean_half(v) for k, v in values.items()},
        }
    return out


def _mean_half(values: list[float]) -> tuple[float, float]:
    s = study.spread(values)
    return s.mean, s.half_range


def epoch_bands(record: dict[str, Any], name: str, key: str = "corpus_loss") -> dict[str, list]:
    """Per epoch of run ``name``: mean, min and max of ``key`` over the recorded seeds."""
    runs = study.runs_of(record, {"run": name})
    if not runs:
        raise unknown("run", name, [p["run"] for p in record["settings"]["points"]])
    if key not in runs[0]["history"][0]:
        raise unknown("metric", key, sorted(runs[0]["history"][0]))
    columns = zip(*[[row[key] for row in r["history"]] for r in runs], strict=True)
    bands = [study.spread(c) for c in columns]
    return {
        "epoch": [row["epoch"] for row in runs[0]["history"]],
        "mean": [b.mean for b in bands],
        "min": [b.min for b in bands],
        "max": [b.max for b in bands],
    }


def first_epoch_share(
    record: dict[str, Any], name: str = "full", key: str = "corpus_loss"
) -> float:
    """How much of the whole rise of ``key`` (seed means) has happened after the first epoch."""
    band = epoch_bands(record, name, key)["mean"]
    if band[-1] == band[0]:
        raise LabkitError(f"{key} of {name!r} did not change; the share is undefined")
    return (band[1] - band[0]) / (band[-1] - band[0])


def least_forgetting(record: dict[str, Any], min_chat_em: float = 0.9) -> str:
    """The recorded run whose chat exact match is >= ``min_chat_em`` on every seed and whose mean
    corpus loss after the last epoch is lowest: the task kept, the least forgotten."""
    means = summary(record)
    kept = [
        n
        for n in means
        if all(r["chat_em"] >= min_chat_em for r in study.runs_of(record, {"run": n}))
    ]
    if not kept:
        raise LabkitError(f"no recorded run reaches chat exact match {min_chat_em} on every seed")
    return min(kept, key=lambda n: means[n]["corpus_loss"][0])


def at_task_loss(
    record: dict[str, Any],
    name: str,
    chat_loss: float,
    key: str = "corpus_loss",
    *,
    first_epoch: int = 1,
) -> list[float | None]:
    """Per recorded seed of run ``name``: ``key`` at the moment its chat validation loss first
    fell to ``chat_loss``, for comparing runs at the same amount of learning.

    Between the two measured epochs around that moment, ``key`` is interpolated linearly in the
    log of the chat loss. Only intervals from epoch ``first_epoch`` on count (default 1): the
    interval from the untrained model (epoch 0) to epoch 1 holds most of the learning (in
    notebook 16's record the chat loss falls tens of times more inside it than across any later
    interval compared) and the largest steps of a decaying schedule, so a straight line across it
    stands for a path nothing measured. A seed whose loss was already below ``chat_loss`` at
    ``first_epoch``, or never reached it, gives None; ``first_epoch=0`` interpolates across the
    first epoch too.
    """
    if not (isinstance(chat_loss, int | float) and math.isfinite(chat_loss) and chat_loss > 0):
        raise LabkitError(f"chat_loss must be a number > 0 (nats/token), got {chat_loss!r}")
    if not isinstance(first_epoch, int) or isinstance(first_epoch, bool) or first_epoch < 0:
        raise LabkitError(
            f"first_epoch must be an integer >= 0 (an epoch index), got {first_epoch!r}"
        )
    runs = study.runs_of(record, {"run": name})
    if not runs:
        raise unknown("run", name, [p["run"] for p in record["settings"]["points"]])
    if key not in runs[0]["history"][0]:
        raise unknown("metric", key, sorted(runs[0]["history"][0]))
    out: list[float | None] = []
    for r in runs:
        rows = r["history"][first_epoch:]
        value = None
        for a, b in itertools.pairwise(rows):
            if a["chat_loss"] >= chat_loss >= b["chat_loss"] and a["chat_loss"] > b["chat_loss"]:
                t = math.log(a["chat_loss"] / chat_loss) / math.log(a["chat_loss"] / b["chat_loss"])
                value = a[key] + t * (b[key] - a[key])
                break
        out.append(value)
    return out
