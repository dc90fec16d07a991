"""A search trial's training memory, estimated before it trains (``labkit tune --gpu-memory``).

:func:`trial_footprint` builds the trial's model on the meta device and dry-runs one forward on
fake tensors (:mod:`labkit.memory.dryrun`); :func:`check_fits` turns it into the reason a trial is
PRUNED before training when it would not fit.
"""

from __future__ import annotations

import math

import optuna

from labkit import LabkitError
from labkit.training.tuning import search
from labkit.training.tuning.search import BATCH_SIZES, LORA_RANKS, Budget, suggest_trial


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
    config = zoo.load_config(search.MODEL_ID)
    config.num_labels = 2
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
        lora = LoraConfig(
            task_type="SEQ_CLS",
            r=lora_r,
            target_modules=search.TARGET_MODULES,
            modules_to_save=["pooler"],
        )
        model = get_peft_model(base, lora)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    model, mode = dryrun.to_fake(model)
    saved: dict[int, int] = {}
    with mode:
        params = {measure.storage_key(p) for p in model.parameters()}
        weights = measure.state_bytes(model).weights

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
    :func:`trial_footprint`; suggests the trial's parameters in the order of
    :func:`labkit.training.tuning.search.objective`, so
    the values are the ones it will train with."""
    r, params = suggest_trial(trial, budget.max_epochs)
    batch = params["per_device_train_batch_size"]
    need = trial_footprint(batch, r, params["optim"], budget.max_length)["total"]
    trial.set_user_attr("estimated_bytes", need)
    if need <= gpu_memory * 2**30:
        return None
    return (
        f"estimated {need / 2**20:.1f} MiB (batch {batch}, r {r}, {params['optim']}) > "
        f"--gpu-memory {gpu_memory:g} GiB; not trained"
    )


def check_any_trial_fits(budget: Budget, gpu_memory: float) -> None:
    """Refuse in one line a ``--gpu-memory`` below the smallest trial of the search (smallest
    batch and rank, ``sgd``): every trial would be PRUNED before training, run after run."""
    batch, r = min(BATCH_SIZES), min(LORA_RANKS)
    need = trial_footprint(batch, r, "sgd", budget.max_length)["total"]
    if need > gpu_memory * 2**30:
        raise LabkitError(
            f"--gpu-memory {gpu_memory:g} GiB is below the smallest trial's estimated "
            f"{need / 2**20:.1f} MiB (batch {batch}, r {r}, sgd), so no trial could train; "
            f"accepted: at least {need / 2**30:.3f} GiB"
        )
