"""LoRA rank and alpha at equal steps (notebook 11 and ``benchmarks/lora_rank_alpha.py``).

- :func:`train_point`: one LoRA training on the zoo chat task from ``labkit.tuners.peft_methods.TRAIN_ARGS``
  with a given rank ``r``, ``lora_alpha`` and seed, scored by held-out exact match and the
  validation answer loss. The notebook (one seed) and the benchmark (two more seeds) share it, so
  the notebook's seed-0 run is one cell of the benchmark's table.
- :func:`update_size`: how far a few AdamW steps move the adapted weights, ``|ΔW| / |W|``
  averaged over the adapted layers: the measurement behind "alpha is only a scale on ΔW".
- :data:`STUDY` / :func:`load` / :func:`summary`: the benchmark's multi-seed record
  (:mod:`labkit.studies.study`), refused when it was recorded for another grid or other training
  arguments (a stale record), and its min / mean / max per (r, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit import LabkitError, checks
from labkit.studies import study
from labkit.tuners import adapters, peft_methods

MODEL_ID = "zoo-llama"
_R, _ALPHA = peft_methods.DEFAULTS["lora"]["r"], peft_methods.DEFAULTS["lora"]["lora_alpha"]
#: (r, lora_alpha): rank 1 against the default rank 8 at the course's scale alpha/r = 2, then
#: alpha at r = 8 (the default 16, 2 and 128).
GRID: tuple[tuple[int, int], ...] = ((1, _ALPHA // _R), (_R, _ALPHA), (_R, 2), (_R, 128))
#: Seeds the benchmark records; notebook 11 trains seed 0 itself, so three seeds in all.
SEEDS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Point:
    """One trained configuration: rank, alpha, seed and what it scored."""

    r: int
    alpha: int
    seed: int
    steps: int
    losses: list[float]
    val_loss: float
    correct: list[bool]

    @property
    def exact_match(self) -> float:
        """Share of the scored held-out questions answered exactly."""
        return sum(self.correct) / len(self.correct)

    @property
    def scale(self) -> float:
        """peft's scaling of ΔW = B·A without rsLoRA: ``alpha / r``."""
        return self.alpha / self.r


def _check_rank_alpha(r: Any, alpha: Any) -> None:
    checks.positive("LoRA rank r", r)  # a numpy integer from a sweep too; 2.5 is no rank
    checks.number("lora_alpha", alpha, above=0)  # NaN or inf would train NaNs


def train_point(tok, r: int, alpha: int, seed: int = 0, limit: int | None = None) -> Point:
    """Train LoRA (all linear layers, rank ``r``, ``lora_alpha``) from a fresh base and score it.

    Training arguments are ``labkit.tuners.peft_methods.TRAIN_ARGS["lora"]`` (same epochs, so the same number of
    steps, for every point); ``seed`` sets the adapter init and the data order. ``limit`` cuts the
    held-out questions (None: all 84).
    """
    from labkit.training import finetune

    _check_rank_alpha(r, alpha)
    model = peft_methods.attach(MODEL_ID, "lora", seed=seed, r=int(r), lora_alpha=alpha)
    run = finetune.train(
        model, tok, seed=seed, data_seed=seed, disable_tqdm=True, **peft_methods.TRAIN_ARGS["lora"]
    )
    scored = finetune.evaluate_chat(model, tok, "test", limit=limit)
    correct = [p == ref for p, ref in zip(scored["predictions"], scored["references"], strict=True)]
    val = finetune.chat_loss(model, tok, "validation")
    return Point(
        r=int(r),
        alpha=alpha,
        seed=seed,
        steps=run.steps,
        losses=list(run.losses),
        val_loss=val,
        correct=correct,
    )


def update_size(
    tok, r: int, alpha: int, use_rslora: bool = False, steps: int = 3, lr: float = 3e-3
) -> float:
    """Mean ``|s·B·A| / |W|`` (Frobenius) over the adapted layers after ``steps`` AdamW steps.

    ``s`` is peft's scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``. The steps
    use the first 16 training examples as one batch, seed 0, so only ``r``, ``alpha`` and the
    scaling rule differ between calls.
    """
    import torch

    from labkit.data import loaders
    from labkit.training import finetune

    _check_rank_alpha(r, alpha)
    steps, lr = checks.positive("steps", steps), checks.number("lr", lr, above=0)
    model = peft_methods.attach(
        MODEL_ID, "lora", seed=0, r=int(r), lora_alpha=alpha, use_rslora=use_rslora
    )
    batch = finetune.ChatCollator(tok.pad_token_id)(
        finetune.chat_features(tok, loaders.load_chat("train")[:16])
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    ratios = [
        float(adapters.lora_delta(m).norm() / adapters.base_weight(m).norm())
        for m in adapters.lora_layers(model).values()
    ]
    return sum(ratios) / len(ratios)


def settings() -> dict[str, Any]:
    """What a current record was made with besides its grid and seeds: model, training
    arguments, what is scored."""
    return {
        "model": MODEL_ID,
        "train_args": dict(peft_methods.TRAIN_ARGS["lora"]),
        "eval": "correct answers on all 84 test questions; answer loss on the validation split",
    }


def _run(point: study.Point, seed: int) -> dict[str, Any]:
    """One point of the benchmark: :func:`train_point` on all 84 held-out questions."""
    from labkit.models import zoo

    p = train_point(zoo.load_tokenizer(MODEL_ID), point["r"], point["alpha"], seed=seed)
    return {"steps": p.steps, "losses": p.losses, "val_loss": p.val_loss, "correct": p.correct}


STUDY = study.Study(
    name="lora_rank_alpha",
    points=tuple({"r": r, "alpha": a} for r, a in GRID),
    seeds=SEEDS,
    run=_run,
    settings=settings,
)
load = STUDY.load


def summary(
    record: dict[str, Any], extra: list[Point] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """Per (r, alpha): exact match and validation loss over the seeds (min, mean, max).

    ``extra`` adds points trained elsewhere (the notebook's seed 0); exact match counts the first
    ``limit`` held-out questions (None: all the record scored), so all seeds are scored alike.
    """
    limit = study.question_limit(limit)
    out = []
    for point in record["settings"]["points"]:
        r, alpha = point["r"], point["alpha"]
        rows = study.runs_of(record, point)
        rows += [
            {"val_loss": p.val_loss, "correct": p.correct, "seed": p.seed}
            for p in extra
            if p.r == r and p.alpha == alpha
        ]
        if not rows:
            raise LabkitError(
                f"record has no point r={r}, alpha={alpha}; re-make it: {STUDY.rerun}"
            )
        n = limit or min(len(p["correct"]) for p in rows)
        if any(len(p["correct"]) < n for p in rows):
            raise LabkitError(f"exact match over {n} questions asked; some points scored fewer")
        em = study.spread([sum(p["correct"][:n]) / n for p in rows])
        val = study.spread([p["val_loss"] for p in rows])
        out.append(
            {
                "r": r,
                "alpha": alpha,
                "scale": alpha / r,
                "seeds": sorted(p["seed"] for p in rows),
                "questions": n,
                "em_min": em.min,
                "em_mean": em.mean,
                "em_max": em.max,
                "val_min": val.min,
                "val_mean": val.mean,
                "val_max": val.max,
            }
        )
    return out
