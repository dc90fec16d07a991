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
and they inform the sampler and the pruner) and FAIL trials never count. A trial still RUNNING
when ``run_search`` starts was left by a killed process: it is marked FAIL (with a note in its
user attributes) and its parameters are drawn again later as a new trial. This assumes one worker
per study, which is how ``labkit tune`` is meant to be used.

Why not ``Trainer.hyperparameter_search`` for the CLI: its ``n_trials`` runs N *more* trials on
every call and counts pruned ones, it accepts no Optuna callbacks (so no
``MaxTrialsCallback``), it reports intermediate values at ``global_step`` (not comparable across
batch sizes, so the median pruner rarely fires), and it seeds ``model_init`` with the *previous*
trial's ``args.seed``. :func:`model_init` suggests the seed itself, so it is right in both paths.
"""

from __future__ import annotations

import argparse
import functools
import math
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

MODEL_ID = "minilm"
TARGET_MODULES = ["query", "value"]
LEARNING_RATE = (1e-5, 1e-2)
SEED_RANGE = (1, 40)
BATCH_SIZES = [8, 16, 32]
OPTIMIZERS = ["sgd", "adamw_torch"]
LORA_RANKS = [4, 8, 16]
LORA_ALPHAS = [8, 16, 32]
NOTE_KEY = "labkit_note"
INTERRUPTED_NOTE = "left RUNNING by an interrupted run; marked FAIL on resume"


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
        "optim": trial.suggest_categorical("optim", OPTIMIZERS),
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

    from labkit import zoo

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

    from labkit import datasets, zoo

    tokenizer = zoo.load_tokenizer(MODEL_ID)

    def features(split: str, n: int | None) -> list[dict]:
        rows = datasets.load_sentiment(split)[:n]
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


def training_args(**overrides: Any):
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
        args=training_args(**args),
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
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, or a one-line :class:`LabkitError` if unusable."""
    if not isinstance(url, str) or "://" not in url:
        raise LabkitError(
            f"storage {url!r} is not a database URL; accepted: e.g. sqlite:///path/to/study.db"
        )
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # sqlalchemy errors, missing drivers, refused connections
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise LabkitError(
            f"cannot open storage {url!r} ({type(err).__name__}: {first}); accepted: a reachable "
            "database URL, e.g. sqlite:///path/to/study.db in an existing folder"
        ) from None


def mark_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING (by a killed process) as FAIL; returns their numbers.

    One worker per study is assumed: a RUNNING trial at start-up cannot belong to a live process.
    """
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, NOTE_KEY, INTERRUPTED_NOTE)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def count(study: optuna.Study, state: TrialState) -> int:
    """How many trials of ``study`` are in ``state``."""
    return len(study.get_trials(deepcopy=False, states=(state,)))


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


def check_request(
    storage: str, study_name: str, n_trials: int, timeout: float | None, budget: str | Budget
) -> tuple[Budget, optuna.storages.RDBStorage]:
    """Validate a search request before anything heavy is imported; returns budget and storage."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials <= 0:
        raise LabkitError(f"n_trials must be a whole number >= 1, got {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise LabkitError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if not study_name or not study_name.strip():
        raise LabkitError("study name is empty; accepted: any non-empty name")
    return get_budget(budget), open_storage(storage)


def run_search(
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None = None,
    seed: int = 0,
    budget: str | Budget = "fast",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) the search until the study holds ``n_trials`` COMPLETE trials.

    Re-running the same call after an interruption runs only what is missing. The TPE sampler is
    seeded with ``seed + len(study.trials)``: an uninterrupted run is reproducible exactly, and a
    resumed run draws new parameters instead of replaying the first trials' draws. The study
    remembers its budget and seed; resuming with different ones is refused.
    ``timeout`` (seconds) stops starting new trials, as in ``study.optimize``.
    """
    b, rdb = check_request(storage, study_name, n_trials, timeout, budget)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    study = optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise LabkitError(f"study {study_name!r} minimises; use a new --study-name")
    wanted = {"budget": b.name, "seed": seed}
    if not study.user_attrs:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    stored = {k: study.user_attrs.get(k) for k in wanted}
    if stored != wanted:
        raise LabkitError(
            f"study {study_name!r} was made with budget {stored['budget']!r} and seed "
            f"{stored['seed']!r}, this run asks for {b.name!r} and {seed!r}; "
            "re-run with the same options or use a new --study-name"
        )
    failed = mark_interrupted(study)
    for number in failed:
        log(f"trial {number} was {INTERRUPTED_NOTE}")
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=4)
    complete = count(study, TrialState.COMPLETE)
    result = SearchResult(study, 0, failed, complete, n_trials)
    missing = n_trials - complete
    log(
        f"study {study_name!r}: {complete} of {n_trials} complete trials stored; "
        + (f"running {missing} more (budget {b.name}, seed {seed})" if missing > 0 else "done")
    )
    if missing <= 0:
        return result
    data = load_data(b)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_trials, initial=complete, unit="trial", desc=study_name, disable=not progress
    )
    say = bar.write if progress else log

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result.started += 1
        seconds = trial.user_attrs.get("seconds", 0.0)
        if trial.state == TrialState.COMPLETE:
            bar.update(1)
            say(
                f"trial {trial.number} COMPLETE  F1 {trial.value:.3f}  {seconds:.1f} s  {trial.params}"
            )
        else:
            step = max(trial.intermediate_values, default=0)
            say(f"trial {trial.number} {trial.state.name} after epoch {step}  {seconds:.1f} s")
        if count(study, TrialState.COMPLETE):
            bar.set_postfix(best=f"{study.best_value:.3f}", pruned=count(study, TrialState.PRUNED))

    cap = 3 * missing + 10  # so a search where nearly everything is pruned cannot loop forever
    try:
        study.optimize(
            functools.partial(objective, data=data),
            n_trials=cap,
            timeout=timeout,
            callbacks=[
                optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,)),
                report,
            ],
        )
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
class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`LabkitError` (one line, exit 2 via the dispatcher)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LabkitError(f"{message}; see python -m labkit tune --help")


def cli_main(argv: list[str]) -> int:
    """``python -m labkit tune --storage URL --study-name NAME --n-trials N [--timeout S]``."""
    parser = _Parser(
        prog="python -m labkit tune",
        description="Resumable Optuna search for LoRA on MiniLM (sentiment). Killed and re-run "
        "with the same command, it continues until the study holds N complete trials.",
    )
    parser.add_argument("--storage", required=True, help="database URL, e.g. sqlite:///study.db")
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="complete trials wanted")
    parser.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--budget", default="fast", choices=list(BUDGETS), help="default fast")
    args = parser.parse_args(argv)
    check_request(args.storage, args.study_name, args.n_trials, args.timeout, args.budget)

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
    )
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
