"""Hyperparameter search with Optuna that survives interruption (notebook 14, ``labkit tune``).

The pieces, each usable on its own and all shared with ``Trainer.hyperparameter_search``:

- :func:`compute_metrics` (accuracy and F1 with scikit-learn: ``evaluate.load`` needs the hub) and
  :func:`compute_objective` (the eval F1, to maximise);
- :func:`hp_space`: learning rate (log scale), epochs, seed, batch size, optimizer (sgd / adamw);
- :func:`model_init`: a fresh MiniLM + LoRA every trial, with the LoRA rank and alpha suggested
  *here*, because ``hp_space`` may only name ``TrainingArguments`` fields;
- :func:`objective`: one trial with the HF ``Trainer``, an eval after every epoch reported to
  Optuna so that a :class:`~optuna.pruners.MedianPruner` can stop bad trials early;
- :func:`run_search`: a seeded, resumable study in SQLite (or any RDB URL) that ends holding
  exactly ``n_trials`` COMPLETE trials, whatever was interrupted before;
- :func:`pruning_savings`: how much training compute pruning saved.

Counting rule: ``n_trials=N`` means N COMPLETE trials. PRUNED trials are extra (they are cheap,
and they inform the sampler and the pruner) and FAIL trials never count.

Several workers may share one study (two terminals running the same ``labkit tune`` command):
each trial records its worker (host and process id) and, through Optuna's heartbeat, stays
marked alive while it runs. A RUNNING trial whose process is gone (same host, process id no
longer alive) is marked FAIL at once; one on another host is failed by Optuna's stale-trial check
once it has missed its heartbeat for :data:`GRACE_PERIOD` seconds. A live trial is never failed.
Each trial's sampler is seeded from ``(seed, trial number)``, so workers draw different
parameters and a one-worker run is reproducible; TPE runs with ``constant_liar`` so that
concurrent workers avoid each other's running configurations. A trial only trains while the
COMPLETE trials plus the RUNNING trials ahead of it are fewer than N; otherwise it waits, and if
the others complete the study it is PRUNED before training (noted in its user attributes), so
the study ends with exactly N COMPLETE trials.

Why not ``Trainer.hyperparameter_search`` for the CLI: its ``n_trials`` runs N *more* trials on
every call and counts pruned ones, it accepts no Optuna callbacks (so no
``MaxTrialsCallback``), it reports intermediate values at ``global_step`` (not comparable across
batch sizes, so the median pruner rarely fires), and it seeds ``model_init`` with the *previous*
trial's ``args.seed``. :func:`model_init` suggests the seed itself, so it is right in both paths.

It is one module of about 1,000 lines because the search, its resume and worker rules, the CLI and
the fault handling share one study's state; splitting them would spread one set of rules over
several files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
import os
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from labkit import LabkitError
from labkit.cli import Parser

MODEL_ID = "minilm"
TARGET_MODULES = ["query", "value"]
LEARNING_RATE = (1e-5, 1e-2)
SEED_RANGE = (1, 40)
BATCH_SIZES = [8, 16, 32]
#: The Trainer ``optim`` names the search tries (not :data:`labkit.memory.estimator.OPTIMIZERS`, the
#: optimizers whose state the estimator sizes).
TRAINER_OPTIMS = ["sgd", "adamw_torch"]
LORA_RANKS = [4, 8, 16]
LORA_ALPHAS = [8, 16, 32]
NOTE_KEY = "labkit_note"
WORKER_KEY = "labkit_worker"
INTERRUPTED_NOTE = "left RUNNING by an interrupted run; marked FAIL on resume"
SURPLUS_NOTE = "not trained: other workers completed the study meanwhile"
#: Optuna heartbeat: a running trial records that it is alive every HEARTBEAT_INTERVAL seconds;
#: one that missed its heartbeat for GRACE_PERIOD seconds is failed by Optuna's stale-trial check.
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 60
#: How often a waiting worker looks at the study again (seconds).
POLL_SECONDS = 0.5
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Budget:
    """How much data and how many epochs a trial may use.

    ``None`` means the whole split. ``max_epochs`` is the top of the epoch range (the notes: 1-5).
    """

    name: str
    n_train: int | None
    n_val: int | None
    max_epochs: int
    max_length: int = 32


BUDGETS: dict[str, Budget] = {
    # checks the plumbing in seconds (tests, the live interrupt demo); its numbers mean little
    "smoke": Budget("smoke", n_train=32, n_val=32, max_epochs=2),
    # the notebook's default: small enough for ~10 trials in well under a minute on 2 cores
    "fast": Budget("fast", n_train=96, n_val=128, max_epochs=3),
    # the whole train (1050) and validation (225) splits, epochs 1-5 as in the notes
    "full": Budget("full", n_train=None, n_val=None, max_epochs=5),
}


def get_budget(budget: str | Budget) -> Budget:
    """A :class:`Budget` from its name (``smoke``, ``fast``, ``full``) or itself."""
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise LabkitError(f"unknown budget {budget!r}; accepted: {', '.join(BUDGETS)}")
    return BUDGETS[budget]


# --- metrics -----------------------------------------------------------------------------------
def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and binary F1 (positive class 1) from the Trainer's ``EvalPrediction``."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.asarray(logits).argmax(-1)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, zero_division=0)),
    }


def compute_objective(metrics: dict[str, float]) -> float:
    """The search maximises the validation F1 (``eval_f1`` in the Trainer's metrics)."""
    if "eval_f1" not in metrics:
        raise LabkitError(f"metrics have no 'eval_f1'; got {', '.join(sorted(metrics))}")
    return float(metrics["eval_f1"])


# --- search space ------------------------------------------------------------------------------
def suggest_seed(trial) -> int:
    """The trial's seed; ``hp_space`` and ``model_init`` both ask, and Optuna returns one value."""
    return trial.suggest_int("seed", *SEED_RANGE)


def hp_space(trial, max_epochs: int = 5) -> dict[str, Any]:
    """The notes' search space: every key is a ``TrainingArguments`` field.

    ``optim`` is today's name for the optimizer choice (``adamw_torch``; ``adamw_hf`` is gone).
    """
    return {
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, max_epochs),
        "seed": suggest_seed(trial),
        "per_device_train_batch_size": trial.suggest_categorical(
            "per_device_train_batch_size", BATCH_SIZES
        ),
        "optim": trial.suggest_categorical("optim", TRAINER_OPTIMS),
    }


def default_params() -> dict[str, Any]:
    """The configuration you get without a search: ``TrainingArguments`` and ``LoraConfig``
    defaults (read from the classes, not typed in)."""
    from peft import LoraConfig
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=_output_dir(), report_to="none")
    lora = LoraConfig()
    return {
        "learning_rate": args.learning_rate,
        "num_train_epochs": int(args.num_train_epochs),
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "lora_r": lora.r,
        "lora_alpha": lora.lora_alpha,
    }


def model_init(trial=None):
    """A fresh MiniLM classifier with LoRA on ``query``/``value``; the head is trained too.

    With a trial, the LoRA rank and alpha (and the seed, so the LoRA and head initialisation
    follow the trial) are suggested here. Without one (the Trainer calls ``model_init()`` once
    when it is built), the :func:`default_params` are used. ``get_peft_model`` changes the base
    in place, which is why every call loads a new base model.
    """
    if trial is None:
        defaults = default_params()
        return build_model(defaults["lora_r"], defaults["lora_alpha"], defaults["seed"])
    r = trial.suggest_categorical("lora_r", LORA_RANKS)
    alpha = trial.suggest_categorical("lora_alpha", LORA_ALPHAS)
    return build_model(r, alpha, suggest_seed(trial))


def build_model(r: int, alpha: int, seed: int):
    """MiniLM (fresh from disk) + LoRA rank ``r``, ``alpha``; ``seed`` fixes LoRA/head init."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from labkit.models import zoo

    set_seed(seed)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated.*")
    base = zoo.load_model(MODEL_ID, task="sequence-classification", num_labels=2)
    # SEQ_CLS adds "classifier" to modules_to_save; the pooler (a 384x384 dense layer in front of
    # it) is trained in full too: with LoRA alone the small budgets barely move the metric.
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=r,
        lora_alpha=alpha,
        target_modules=TARGET_MODULES,
        modules_to_save=["pooler"],
    )
    return get_peft_model(base, config)


# --- data and trainer --------------------------------------------------------------------------
def freeze_import_garbage() -> int:
    """Import the training stack, then ``gc.freeze()``; returns how many objects were frozen.

    ``Trainer.train()`` starts with a full ``gc.collect()`` (accelerate's ``free_memory``). With
    torch, transformers and peft loaded that walks a few million long-lived objects: ~0.5 s on
    a laptop core, paid again by every trial of a search. Freezing moves the objects alive now
    (the imported libraries, which are never freed anyway) out of the collector's reach, so each
    collection only looks at what the trials create.
    """
    import gc

    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class TuningData:
    """Tokenised sentiment splits for one budget, with the tokenizer and a padding collator."""

    budget: Budget
    tokenizer: Any
    collator: Any
    train: list[dict]
    validation: list[dict]
    test: list[dict]


def load_data(budget: str | Budget = "fast") -> TuningData:
    """The sentiment splits cut to the budget (test is always whole), tokenised once per process."""
    return _load_data(get_budget(budget))


@functools.cache
def _load_data(b: Budget) -> TuningData:
    from transformers import DataCollatorWithPadding

    from labkit.data import loaders
    from labkit.models import zoo

    tokenizer = zoo.load_tokenizer(MODEL_ID)

    def features(split: str, n: int | None) -> list[dict]:
        rows = loaders.load_sentiment(split)[:n]
        return [
            {**tokenizer(r["text"], truncation=True, max_length=b.max_length), "labels": r["label"]}
            for r in rows
        ]

    return TuningData(
        budget=b,
        tokenizer=tokenizer,
        collator=DataCollatorWithPadding(tokenizer),
        train=features("train", b.n_train),
        validation=features("validation", b.n_val),
        test=features("test", None),
    )


@functools.cache
def _output_dir() -> str:
    return tempfile.mkdtemp(prefix="labkit-tune-")


def trial_arguments(**overrides: Any):
    """``TrainingArguments`` for search trials: eval every epoch, nothing saved, no bars.

    Learning rate, epochs, seed, batch size and optimizer stay at the library defaults unless
    given: those are what the search changes (``eval_strategy`` replaced ``evaluation_strategy``).
    """
    from transformers import TrainingArguments

    settings: dict[str, Any] = {
        "output_dir": _output_dir(),
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "per_device_eval_batch_size": 64,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def make_trainer(data: TuningData, model, params: dict[str, Any], callbacks=()):
    """A ``Trainer`` for one configuration (``params``: the :func:`hp_space` keys; ``lora_*``
    keys are ignored here, they belong to the model)."""
    import torch
    from transformers import PrinterCallback, Trainer

    args = {k: v for k, v in params.items() if not k.startswith("lora_")}
    rng = torch.random.get_rng_state()
    trainer = Trainer(
        model=model,
        args=trial_arguments(**args),
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=data.collator,
        processing_class=data.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # added when bars are off; it prints every eval dict
    # Trainer() re-seeds; going on from the RNG state left by model_init (as hyperparameter_search
    # does) makes a retrained configuration reproduce its search trial's dropout exactly.
    torch.random.set_rng_state(rng)
    return trainer


def fit(params: dict[str, Any], data: TuningData):
    """Train one fixed configuration (a trial's ``params``, or :func:`default_params`).

    Returns the trained ``Trainer``; ``trainer.evaluate(data.test)`` gives the test numbers.
    """
    model = build_model(params["lora_r"], params["lora_alpha"], params["seed"])
    trainer = make_trainer(data, model, params)
    trainer.train()
    return trainer


def pruning_callback(trial: optuna.Trial):
    """A ``TrainerCallback`` that reports the eval F1 after each epoch (step = epochs done)
    to Optuna and raises ``TrialPruned`` when the pruner says so.

    Reporting per epoch makes trials with different batch sizes comparable at the same step. The
    steps run and planned go to the trial's user attributes for :func:`pruning_savings`;
    ``callback.last_value`` holds the latest F1.
    """
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        last_value: float | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            epoch = int(round(state.epoch or 0))
            self.last_value = value = compute_objective(metrics or {})
            trial.set_user_attr("train_steps", state.global_step)
            trial.set_user_attr("planned_steps", state.max_steps)
            trial.report(value, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"F1 {value:.3f} after epoch {epoch}")

    return PruningCallback()


PRUNED_REASON_KEY = "pruned_reason"


def trial_footprint(
    batch: int, lora_r: int, optim: str = "adamw_torch", max_length: int = 32
) -> dict[str, int]:
    """Estimated training memory of one trial in bytes (fp32, as the trials run): an explicit
    estimate from the model built on the meta device, with a dry-run activation.

    - ``weights``: every parameter of the peft model (MiniLM, LoRA on query/value, the pooler
      and classifier with their trainable copies, ``modules_to_save``), 4 B each;
    - ``gradients``: 4 B per trainable parameter;
    - ``optimizer``: ``adamw_torch`` m and v (8 B per trainable parameter + a 4-byte step per
      tensor, :func:`labkit.memory.estimator.optimizer_bytes`); the Trainer's ``sgd`` has no momentum, so
      no state;
    - ``activations``: a dry run (:func:`labkit.memory.dryrun.to_fake`): one forward + loss of the
      sequence classifier on fake CPU tensors of ``batch`` × ``max_length`` tokens (the longest
      a padded batch can be), the bytes autograd saves for backward counted as
      :func:`labkit.memory.measure.saved_tensor_bytes` counts them (unique storages, parameters out).

    Left out: the evaluation pass (no grad, batch 64) and allocator overheads.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from labkit.checks import positive
    from labkit.memory import dryrun, estimator, measure
    from labkit.models import zoo

    positive("batch", batch)
    positive("LoRA rank r", lora_r)
    config = zoo.load_config(MODEL_ID)
    config.num_labels = 2
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
        lora = LoraConfig(
            task_type="SEQ_CLS", r=lora_r, target_modules=TARGET_MODULES, modules_to_save=["pooler"]
        )
        model = get_peft_model(base, lora)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    model, mode = dryrun.to_fake(model)
    saved: dict[int, int] = {}
    with mode:
        params = set(measure._storages(measure._param_tensors(model)))
        weights = sum(measure._storages(measure._param_tensors(model)).values())

        def pack(t):
            key = measure.storage_key(t)
            if key not in params:
                saved[key] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, config.vocab_size, (batch, max_length))
        labels = torch.zeros(batch, dtype=torch.long)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    n_train = sum(math.prod(s) for s in shapes.values())
    opt = estimator.optimizer_bytes(shapes, "adamw") if optim.startswith("adamw") else 0
    out = {
        "weights": weights,
        "gradients": 4 * n_train,
        "optimizer": opt,
        "activations": sum(saved.values()),
    }
    out["total"] = sum(out.values())
    return out


def check_fits(trial: optuna.Trial, budget: Budget, gpu_memory: float) -> str | None:
    """Why this trial would not fit in ``gpu_memory`` GiB (None when it fits), from
    :func:`trial_footprint`; suggests the trial's parameters in :func:`objective`'s order, so
    the values are the ones it will train with."""
    r = trial.suggest_categorical("lora_r", LORA_RANKS)
    trial.suggest_categorical("lora_alpha", LORA_ALPHAS)
    suggest_seed(trial)
    params = hp_space(trial, max_epochs=budget.max_epochs)
    batch = params["per_device_train_batch_size"]
    need = trial_footprint(batch, r, params["optim"], budget.max_length)["total"]
    trial.set_user_attr("estimated_bytes", need)
    if need <= gpu_memory * 2**30:
        return None
    return (
        f"estimated {need / 2**20:.1f} MiB (batch {batch}, r {r}, {params['optim']}) > "
        f"--gpu-memory {gpu_memory:g} GiB; not trained"
    )


def objective(trial: optuna.Trial, data: TuningData) -> float:
    """One trial: fresh model, the trial's arguments, train with per-epoch evals; final F1."""
    start = time.perf_counter()
    model = model_init(trial)
    params = hp_space(trial, max_epochs=data.budget.max_epochs)
    callback = pruning_callback(trial)
    trainer = make_trainer(data, model, params, callbacks=[callback])
    try:
        trainer.train()
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    if callback.last_value is None:
        raise RuntimeError("the trial ran no evaluation")
    return callback.last_value


# --- pruning report ----------------------------------------------------------------------------
def pruning_savings(study: optuna.Study, n_train: int | None = None) -> dict[str, float]:
    """Training steps run and saved by pruning, over the study's COMPLETE and PRUNED trials.

    labkit trials store ``train_steps``/``planned_steps``. For ``Trainer.hyperparameter_search``
    trials (no such attributes) they are derived from the params and ``n_train``: the last
    reported step is the ``global_step`` there. ``fraction_saved`` is saved / (run + saved): the
    share of the unpruned search's training steps that were never run.
    """
    run = saved = pruned = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "planned_steps" in t.user_attrs:
            done, planned = t.user_attrs["train_steps"], t.user_attrs["planned_steps"]
        elif n_train is not None and t.intermediate_values:
            per_epoch = math.ceil(n_train / t.params["per_device_train_batch_size"])
            planned = per_epoch * t.params["num_train_epochs"]
            done = max(t.intermediate_values) if t.state == TrialState.PRUNED else planned
        else:
            continue
        run += done
        if t.state == TrialState.PRUNED:
            pruned += 1
            saved += planned - done
    total = run + saved
    return {
        "pruned_trials": pruned,
        "steps_run": run,
        "steps_saved": saved,
        "fraction_saved": saved / total if total else 0.0,
    }


# --- resumable search --------------------------------------------------------------------------
def _is_schema_race(err: Exception) -> bool:
    """Whether opening a storage failed because another process was creating it at that moment."""
    text = str(err).lower()
    return type(err).__name__ in {"IntegrityError", "OperationalError"} and any(
        key in text for key in ("unique constraint", "already exists", "database is locked")
    )


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` with the heartbeat on, or a one-line :class:`LabkitError`.

    Two processes creating the same new database at once race on its schema: the loser retries
    (``attempts`` times, a fraction of a second apart) instead of failing.
    """
    if not isinstance(url, str) or "://" not in url:
        raise LabkitError(
            f"storage {url!r} is not a database URL; accepted: e.g. sqlite:///path/to/study.db"
        )
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD
                )
        except Exception as err:  # sqlalchemy errors, missing drivers, refused connections
            if _is_schema_race(err) and attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise LabkitError(
                f"cannot open storage {url!r} ({type(err).__name__}: {first}); accepted: a "
                "reachable database URL, e.g. sqlite:///path/to/study.db in an existing folder"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def worker_id() -> str:
    """``host:pid`` of this process, stored in each trial it runs (:data:`WORKER_KEY`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _orphan_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a RUNNING trial certainly has no live process, or None when it may be alive."""
    worker = trial.user_attrs.get(WORKER_KEY)
    if isinstance(worker, str) and worker.count(":") >= 1:
        host, _, pid_text = worker.rpartition(":")
        if host != socket.gethostname() or not pid_text.isdigit():
            return None  # another machine: Optuna's heartbeat decides
        pid = int(pid_text)
        if pid == os.getpid():
            return "this process is not running it"
        return None if _pid_alive(pid) else "its process is gone"
    started = trial.datetime_start
    if started is not None and (time.time() - started.timestamp()) > GRACE_PERIOD:
        return f"no worker recorded, started over {GRACE_PERIOD} s ago"
    return None


def fail_orphans(
    study: optuna.Study, log: Callable[[str], None] | None = None, keep: tuple[int, ...] = ()
) -> list[int]:
    """Mark FAIL the RUNNING trials whose process is certainly gone; returns their numbers.

    A trial counts as orphaned when its recorded worker ran on this host and that process no
    longer exists (or is this process, which is not running it), or when it records no worker
    and started more than :data:`GRACE_PERIOD` seconds ago. Trials of live processes and of
    other hosts are left alone (Optuna's heartbeat check fails those that stop). Trials in
    ``keep`` (this process's running trial) are never touched. Uses ``Study.tell``.
    """
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in keep:
            continue
        why = _orphan_reason(t)
        if why is None:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, ValueError):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            numbers.append(t.number)
            if log is not None:
                log(f"trial {t.number} was {INTERRUPTED_NOTE} ({why})")
    return numbers


def fail_stale(study: optuna.Study) -> None:
    """Optuna's own stale-trial check (missed heartbeats for :data:`GRACE_PERIOD` seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def count(study: optuna.Study, state: TrialState) -> int:
    """How many trials of ``study`` are in ``state``."""
    return len(study.get_trials(deepcopy=False, states=(state,)))


def trial_sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler for trial ``number`` of a search seeded with ``seed``.

    Its seed mixes both (``numpy.random.SeedSequence``), so every trial, whichever worker runs
    it, draws from its own stream: two workers never repeat each other's draws, and a one-worker
    search is reproducible. ``constant_liar`` makes TPE treat running trials as poor results, so
    concurrent workers spread out (Optuna's advice for distributed TPE).
    """
    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=4, constant_liar=True)


def _room(study: optuna.Study, n_trials: int, before: int | None = None) -> int | None:
    """Free slots: ``n_trials`` minus COMPLETE minus RUNNING (only those numbered below
    ``before`` when given); None once the study holds ``n_trials`` COMPLETE trials."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if complete >= n_trials:
        return None
    running = [
        t for t in trials if t.state == TrialState.RUNNING and (before is None or t.number < before)
    ]
    return n_trials - complete - len(running)


def wait_for_room(
    study: optuna.Study,
    n_trials: int,
    before: int | None = None,
    deadline: float | None = None,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Wait until a trial may train (True) or the study is complete or ``deadline`` passed
    (False). While waiting, trials of stopped processes are failed (:func:`fail_orphans`,
    :func:`fail_stale`) so that a killed worker never blocks the others for long."""
    keep = () if before is None else (before,)
    while True:
        room = _room(study, n_trials, before)
        if room is None:
            return False
        if room > 0:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        fail_orphans(study, log, keep)
        fail_stale(study)
        time.sleep(POLL_SECONDS)


@dataclass
class SearchResult:
    """What :func:`run_search` did: the study, trials started now, trials marked FAIL."""

    study: optuna.Study
    started: int
    marked_failed: list[int] = field(default_factory=list)
    complete: int = 0
    n_trials: int = 0

    @property
    def finished(self) -> bool:
        return self.complete >= self.n_trials


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_request(
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None,
    budget: str | Budget,
    *,
    seed: int = 0,
) -> tuple[Budget, optuna.storages.RDBStorage]:
    """Validate a search request, then open the storage; returns budget and storage.

    Every option is checked before the storage is touched, so a bad option never leaves a
    half-made study behind. numpy integers count as integers.
    """
    if not _is_int(n_trials) or n_trials <= 0:
        raise LabkitError(f"n_trials must be a whole number >= 1, got {n_trials!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0
    ):
        raise LabkitError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if not isinstance(study_name, str) or not study_name.strip():
        raise LabkitError(f"study name is empty; accepted: any non-empty name, got {study_name!r}")
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise LabkitError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    b = get_budget(budget)
    if not isinstance(storage, str) or "://" not in storage:
        raise LabkitError(
            f"storage {storage!r} is not a database URL; accepted: e.g. sqlite:///path/to/study.db"
        )
    return b, open_storage(storage)


class _DropInterruptTracebacks(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt" warning and its traceback: the
    command prints one line about the interruption instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, KeyboardInterrupt))


_INTERRUPT_FILTER = _DropInterruptTracebacks()


def _open_study(rdb, study_name: str, seed: int, b: Budget) -> optuna.Study:
    """Create or load the study, check its direction and remember budget and seed in it."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    try:
        study = optuna.create_study(
            storage=rdb,
            study_name=study_name,
            direction="maximize",
            pruner=pruner,
            load_if_exists=True,
        )
        if len(study.directions) != 1:
            raise LabkitError(
                f"study {study_name!r} has {len(study.directions)} objectives; labkit tune "
                "maximises one (the F1): use a new --study-name"
            )
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise LabkitError(f"study {study_name!r} minimises; use a new --study-name")
        wanted = {"budget": b.name, "seed": seed}
        if not study.user_attrs and not study.get_trials(deepcopy=False):  # a new study
            for key, value in wanted.items():
                study.set_user_attr(key, value)
    except optuna.exceptions.StorageInternalError as err:
        raise LabkitError(
            f"cannot write to the storage ({str(err).splitlines()[0][:100]}); accepted: a "
            "database you may write to (is the file or its folder read-only?)"
        ) from None
    stored = {k: study.user_attrs.get(k) for k in wanted}
    if stored != wanted:
        made = (
            "outside labkit tune (no budget or seed recorded)"
            if stored == {"budget": None, "seed": None}
            else f"with budget {stored['budget']!r} and seed {stored['seed']!r}"
        )
        raise LabkitError(
            f"study {study_name!r} was made {made}, this run asks for {b.name!r} and {seed!r}; "
            "re-run with the same options or use a new --study-name"
        )
    return study


def run_search(
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None = None,
    seed: int = 0,
    budget: str | Budget = "fast",
    progress: bool = False,
    log: Callable[[str], None] = print,
    gpu_memory: float | None = None,
) -> SearchResult:
    """Run (or resume) the search until the study holds ``n_trials`` COMPLETE trials.

    Re-running the same call after an interruption runs only what is missing; several processes
    may run it on one study at once (see the module docstring: heartbeat, per-trial seeds,
    exactly N). The study remembers its budget and seed; resuming with different ones is
    refused. Every option is validated before the storage is opened. ``timeout`` (seconds) stops
    starting new trials, as in ``study.optimize``. ``gpu_memory`` (GiB): before training, a
    trial whose :func:`trial_footprint` exceeds it is PRUNED with the reason in its user
    attribute ``pruned_reason`` (not trained, not counted toward ``n_trials``).
    """
    if gpu_memory is not None and (
        isinstance(gpu_memory, bool)
        or not isinstance(gpu_memory, numbers.Real)
        or not gpu_memory > 0
    ):
        raise LabkitError(f"GPU memory must be a number of GiB > 0, got {gpu_memory!r}")
    b, rdb = check_request(storage, study_name, n_trials, timeout, budget, seed=seed)
    seed, n_trials = int(seed), int(n_trials)  # numpy integers are stored as plain ints
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(_INTERRUPT_FILTER)
    study = _open_study(rdb, study_name, seed, b)
    rdb.heartbeat_stale_trial_callback = lambda _study, t: log(
        f"trial {t.number} missed its heartbeat for {GRACE_PERIOD} s; marked FAIL"
    )
    failed = fail_orphans(study, log)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    complete = count(study, TrialState.COMPLETE)
    result = SearchResult(study, 0, failed, complete, n_trials)
    missing = n_trials - complete
    running = count(study, TrialState.RUNNING)
    log(
        f"study {study_name!r}: {complete} of {n_trials} complete trials stored"
        + (f", {running} running elsewhere" if running and missing > 0 else "")
        + "; "
        + (f"running {missing} more (budget {b.name}, seed {seed})" if missing > 0 else "done")
    )
    if missing <= 0 or not wait_for_room(study, n_trials, deadline=deadline, log=log):
        result.complete = count(study, TrialState.COMPLETE)
        return result
    data = load_data(b)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_trials, initial=complete, unit="trial", desc=study_name, disable=not progress
    )
    say = bar.write if progress else log

    def coordinated(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_KEY, worker_id())
        if not wait_for_room(study, n_trials, before=trial.number, log=say):
            trial.set_user_attr(NOTE_KEY, SURPLUS_NOTE)
            study.stop()
            raise optuna.TrialPruned(SURPLUS_NOTE)
        study.sampler = trial_sampler(seed, trial.number)
        if gpu_memory is not None:
            reason = check_fits(trial, b, float(gpu_memory))
            if reason is not None:
                trial.set_user_attr(PRUNED_REASON_KEY, reason)
                raise optuna.TrialPruned(reason)
        return objective(trial, data)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result.started += 1
        seconds = trial.user_attrs.get("seconds", 0.0)
        if trial.state == TrialState.COMPLETE:
            bar.n = min(n_trials, count(study, TrialState.COMPLETE))
            bar.refresh()
            say(
                f"trial {trial.number} COMPLETE  F1 {trial.value:.3f}  {seconds:.1f} s  {trial.params}"
            )
        elif trial.user_attrs.get(NOTE_KEY) == SURPLUS_NOTE:
            say(f"trial {trial.number} {SURPLUS_NOTE}")
        elif PRUNED_REASON_KEY in trial.user_attrs:
            say(
                f"trial {trial.number} PRUNED before training: {trial.user_attrs[PRUNED_REASON_KEY]}"
            )
        else:
            step = max(trial.intermediate_values, default=0)
            say(f"trial {trial.number} {trial.state.name} after epoch {step}  {seconds:.1f} s")
        if count(study, TrialState.COMPLETE):
            bar.set_postfix(best=f"{study.best_value:.3f}", pruned=count(study, TrialState.PRUNED))
        # stop when the study is complete; wait while other workers' trials could complete it
        if not wait_for_room(study, n_trials, deadline=deadline, log=say):
            study.stop()

    cap = 3 * missing + 10  # so a search where nearly everything is pruned cannot loop forever
    try:
        study.optimize(coordinated, n_trials=cap, timeout=timeout, callbacks=[report])
    finally:
        bar.close()
    result.complete = count(study, TrialState.COMPLETE)
    if not result.finished:
        why = "the timeout" if timeout is not None else f"the cap of {cap} trials per run"
        log(
            f"stopped by {why} with {result.complete} of {n_trials} complete trials; "
            "re-run the same command to continue"
        )
    return result


def summary(study: optuna.Study, n_train: int | None = None) -> str:
    """The best trial and what pruning saved, as a few printable lines."""
    if not count(study, TrialState.COMPLETE):
        return "no complete trial yet"
    best = study.best_trial
    s = pruning_savings(study, n_train)
    return "\n".join(
        [
            f"best trial: #{best.number}  validation F1 {best.value:.4f}",
            f"best params: {best.params}",
            f"trials: {count(study, TrialState.COMPLETE)} complete, {s['pruned_trials']} pruned, "
            f"{count(study, TrialState.FAIL)} failed",
            f"pruning saved {s['steps_saved']} of {s['steps_run'] + s['steps_saved']} training "
            f"steps ({100 * s['fraction_saved']:.0f}%)",
        ]
    )


# --- command line ------------------------------------------------------------------------------
def _stored_complete(storage: str, study_name: str) -> int | None:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # no study yet, or the storage is busy
        return None
    return count(study, TrialState.COMPLETE)


def cli_main(argv: list[str]) -> int:
    """``python -m labkit tune --storage URL --study-name NAME --n-trials N [--timeout S]``.

    Ctrl-C stops with one line saying what the study keeps and how to go on (exit status 130).
    """
    parser = Parser(
        prog="python -m labkit tune",
        description="Resumable Optuna search for LoRA on MiniLM (sentiment). Killed and re-run "
        "with the same command, it continues until the study holds N complete trials; several "
        "processes may run the same command on one study at once.",
    )
    parser.add_argument("--storage", required=True, help="database URL, e.g. sqlite:///study.db")
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="complete trials wanted")
    parser.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed, 0..2**32-1 (default 0)")
    parser.add_argument("--budget", default="fast", choices=list(BUDGETS), help="default fast")
    parser.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GIB",
        help="prune, before training, trials whose estimated memory exceeds GIB",
    )
    args = parser.parse_args(argv)
    if args.gpu_memory is not None and not args.gpu_memory > 0:
        raise LabkitError(f"--gpu-memory must be a number of GiB > 0, got {args.gpu_memory}")
    check_request(
        args.storage, args.study_name, args.n_trials, args.timeout, args.budget, seed=args.seed
    )
    try:
        from transformers.utils import logging as hf_logging

        from labkit import hardware

        hardware.setup()
        hf_logging.disable_progress_bar()  # one bar for the search, not one per weight load
        freeze_import_garbage()  # saves ~0.5 s per trial (see its docstring)
        result = run_search(
            args.storage,
            args.study_name,
            args.n_trials,
            timeout=args.timeout,
            seed=args.seed,
            budget=args.budget,
            progress=True,
            gpu_memory=args.gpu_memory,
        )
    except KeyboardInterrupt:
        done = _stored_complete(args.storage, args.study_name)
        kept = "nothing yet" if done is None else f"{done} of {args.n_trials} complete trials"
        print(
            f"labkit tune: interrupted; study {args.study_name!r} keeps {kept} (a trial cut short "
            "is marked FAIL and does not count); run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    print(summary(result.study))
    return 0


def kill_mid_search(
    argv: list[str], storage: str, study_name: str, timeout: float = 300.0
) -> list[optuna.trial.FrozenTrial]:
    """Start ``python -m labkit tune ARGV`` and SIGKILL it mid-trial; return the study's trials.

    It waits until at least one trial is COMPLETE and another is RUNNING, so the kill leaves a
    RUNNING trial behind, as a crash or a closed laptop would. Used by the notebook and the tests.
    """
    import os
    import signal
    import subprocess
    import sys

    from labkit import REPO_ROOT

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "labkit", "tune", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                trials = optuna.load_study(study_name=study_name, storage=storage).trials
            except Exception:  # the study does not exist yet, or the file is busy
                continue
            states = {t.state for t in trials}
            if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not killed:
        raise RuntimeError(f"the search ended (status {proc.returncode}) before it could be killed")
    return optuna.load_study(study_name=study_name, storage=storage).trials
