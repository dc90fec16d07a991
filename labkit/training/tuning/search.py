"""The search pieces of notebook 14: LoRA on MiniLM for the sentiment set, each piece shared with
``Trainer.hyperparameter_search``.

- :func:`compute_metrics` (accuracy and F1 with scikit-learn: ``evaluate.load`` needs the hub) and
  :func:`compute_objective` (the eval F1, to maximise);
- :func:`hp_space`: learning rate (log scale), epochs, seed, batch size, optimizer (sgd / adamw);
- :func:`model_init`: a fresh MiniLM + LoRA every trial, with the LoRA rank and alpha suggested
  *here*, because ``hp_space`` may only name ``TrainingArguments`` fields;
- :func:`objective`: one trial with the HF ``Trainer``, an eval after every epoch reported to
  Optuna so that a :class:`~optuna.pruners.MedianPruner` can stop bad trials early;
- :func:`pruning_savings`: how much training compute pruning saved.

Why not ``Trainer.hyperparameter_search`` for the command line: its ``n_trials`` runs N *more*
trials on every call and counts pruned ones, it accepts no Optuna callbacks (so no
``MaxTrialsCallback``), it reports intermediate values at ``global_step`` (not comparable across
batch sizes, so the median pruner rarely fires), and it seeds ``model_init`` with the *previous*
trial's ``args.seed``. :func:`model_init` suggests the seed itself, so it is right in both paths.
The study that survives interruption is :mod:`labkit.training.tuning.coordination`.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

import labkit
from labkit import LabkitError

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


@dataclass(frozen=True)
class Budget:
    """How much data and how many epochs a trial may use.

    ``None`` means the whole split. ``max_epochs`` is the top of the epoch range (transformers'
    ``default_hp_space_optuna`` searches 1-5).
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
    # the whole train (1050) and validation (225) splits, epochs 1-5 as transformers' default space
    "full": Budget("full", n_train=None, n_val=None, max_epochs=5),
}


def get_budget(budget: str | Budget) -> Budget:
    """A :class:`Budget` from its name (``smoke``, ``fast``, ``full``) or itself."""
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise labkit.unknown("budget", budget, BUDGETS)
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
    """The search space of notebook 14: every key is a ``TrainingArguments`` field.

    ``optim`` is today's name for the optimizer choice (``adamw_torch``; ``adamw_hf`` is gone).
    ``TrainingArguments``' default, ``adamw_torch_fused`` with torch >= 2.8 (``adamw_torch``
    before), is the same AdamW with ``fused=True``.
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


class _SpaceRecorder:
    """A stand-in trial that records what is suggested (name -> Optuna distribution)."""

    def __init__(self) -> None:
        self.distributions: dict[str, Any] = {}

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.distributions[name] = optuna.distributions.FloatDistribution(low, high, log=log)
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.distributions[name] = optuna.distributions.IntDistribution(low, high)
        return low

    def suggest_categorical(self, name: str, choices: list) -> Any:
        self.distributions[name] = optuna.distributions.CategoricalDistribution(choices)
        return choices[0]


def suggest_trial(trial, max_epochs: int = 5) -> tuple[int, dict[str, Any]]:
    """Every parameter of a course trial, suggested in the order :func:`objective` asks them:
    the LoRA rank (returned), alpha and seed (:func:`model_init`), then :func:`hp_space`."""
    r = trial.suggest_categorical("lora_r", LORA_RANKS)
    trial.suggest_categorical("lora_alpha", LORA_ALPHAS)
    suggest_seed(trial)
    return r, hp_space(trial, max_epochs=max_epochs)


def search_space(max_epochs: int = 5) -> dict[str, Any]:
    """The course search's parameters as Optuna distributions, by name: a stored study must
    have searched exactly these to be resumed (or reported) as this search."""
    recorder = _SpaceRecorder()
    suggest_trial(recorder, max_epochs)
    return recorder.distributions


def default_params() -> dict[str, Any]:
    """The configuration you get without a search: ``TrainingArguments`` and ``LoraConfig``
    defaults (read from the classes, not typed in)."""
    from peft import LoraConfig

    from labkit.training import finetune

    args = finetune.training_arguments(_output_dir(), course_defaults=False, report_to="none")
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


def check_encoder(model_id: str) -> str:
    """``model_id`` if it can stand in for MiniLM here, else a one-line :class:`LabkitError`.

    The search puts LoRA on modules named ``query`` and ``value`` and trains the ``pooler``: a
    BERT-style encoder has them, a causal LM (Llama, Qwen2...) has neither. Checked on the meta
    device from the config alone, so nothing is loaded.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from labkit.models import zoo

    config = zoo.load_config(model_id)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in [*TARGET_MODULES, "pooler"] if m not in names]
    if missing:
        raise LabkitError(
            f"notebook 14 tunes a BERT-style encoder (LoRA on {' and '.join(TARGET_MODULES)}, the "
            f"pooler trained); {model_id!r} is a {config.model_type} model without "
            f"{', '.join(missing)}; accepted: minilm or another BERT-family encoder"
        )
    return model_id


def build_model(r: int, alpha: int, seed: int):
    """MiniLM (fresh from disk) + LoRA rank ``r``, ``alpha``; ``seed`` fixes LoRA/head init."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from labkit.models import zoo

    set_seed(seed)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated.*")
    # fp32 whatever the checkpoint stores (transformers 5 would keep a bf16 hub checkpoint in bf16)
    base = zoo.load_model(
        check_encoder(MODEL_ID), task="sequence-classification", num_labels=2, dtype="float32"
    )
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
    from labkit.training import finetune

    settings: dict[str, Any] = {
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "per_device_eval_batch_size": 64,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
    }
    return finetune.training_arguments(_output_dir(), course_defaults=False, **settings | overrides)


def make_trainer(data: TuningData, model, params: dict[str, Any], callbacks=()):
    """A ``Trainer`` for one configuration (``params``: the :func:`hp_space` keys; ``lora_*``
    keys are ignored here, they belong to the model), built by
    :func:`labkit.training.finetune.make_trainer` (no bars, no printed eval dicts)."""
    import torch

    from labkit.training import finetune

    args = {k: v for k, v in params.items() if not k.startswith("lora_")}
    rng = torch.random.get_rng_state()
    trainer = finetune.make_trainer(
        model,
        trial_arguments(**args),
        data.train,
        data.validation,
        data.collator,
        data.tokenizer,
        callbacks,
        compute_metrics,
    )
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
    pruner is not asked after the last epoch: the trial has trained in full by then, so pruning it
    would save nothing, and a PRUNED trial keeps only its last reported value: it can never be the
    study's ``best_trial``, and TPE ranks it below every complete trial. The steps run and planned
    go to the trial's user attributes for :func:`pruning_savings`; ``callback.last_value`` holds
    the latest F1.
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
            finished = state.global_step >= state.max_steps
            if not finished and trial.should_prune():
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
