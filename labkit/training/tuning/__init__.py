"""Hyperparameter search with Optuna that survives interruption (notebook 14, ``labkit tune``).

Four modules, one job each:

- :mod:`~labkit.training.tuning.search`: the search pieces shared with
  ``Trainer.hyperparameter_search`` (budgets, metrics, ``hp_space``, ``model_init``, trial
  arguments and ``Trainer``, the objective, what pruning saved);
- :mod:`~labkit.training.tuning.footprint`: a trial's memory, estimated before it trains;
- :mod:`~labkit.training.tuning.coordination`: the resumable study that ends with exactly N
  COMPLETE trials, shared by several workers, for any objective;
- :mod:`~labkit.training.tuning.cli`: the course's search as a function (``run_search``) and as
  ``python -m labkit tune``.

What notebook 14 calls is re-exported here (``tuning.hp_space``, ``tuning.run_search``...).
"""

from labkit.training.tuning.cli import cli_main, run_search, summary
from labkit.training.tuning.coordination import NOTE_KEY
from labkit.training.tuning.search import (
    BATCH_SIZES,
    LEARNING_RATE,
    LORA_ALPHAS,
    LORA_RANKS,
    SEED_RANGE,
    TRAINER_OPTIMS,
    compute_metrics,
    compute_objective,
    default_params,
    fit,
    freeze_import_garbage,
    get_budget,
    hp_space,
    load_data,
    model_init,
    pruning_savings,
    trial_arguments,
)

__all__ = [
    "BATCH_SIZES",
    "LEARNING_RATE",
    "LORA_ALPHAS",
    "LORA_RANKS",
    "NOTE_KEY",
    "SEED_RANGE",
    "TRAINER_OPTIMS",
    "cli_main",
    "compute_metrics",
    "compute_objective",
    "default_params",
    "fit",
    "freeze_import_garbage",
    "get_budget",
    "hp_space",
    "load_data",
    "model_init",
    "pruning_savings",
    "run_search",
    "summary",
    "trial_arguments",
]
