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
#: (r, lora_alpha) with rsLoRA (scale alpha/sqrt(r)): rank 1 against rank 8 at one alpha, so that
#: both take updates of about the same size (notebook 11, section 6) and only the rank differs.
RSLORA_GRID: tuple[tuple[int, int], ...] = ((1, _ALPHA), (_R, _ALPHA))
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
    rslora: bool = False
    #: answer loss on the training split after the last step (eval mode), the generalisation
    #: gap's denominator: the logged ``losses`` are means over a window, taken while still falling
    train_loss: float = float("nan")

    @property
    def exact_match(self) -> float:
        """Share of the scored held-out questions answered exactly."""
        return sum(self.correct) / len(self.correct)

    @property
    def scale(self) -> float:
        """peft's scaling of ΔW = B·A: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / self.r**0.5 if self.rslora else self.alpha / self.r


def _check_rank_alpha(r: Any, alpha: Any) -> None:
    checks.positive("LoRA rank r", r)  # a numpy integer from a sweep too; 2.5 is no rank
    checks.number("lora_alpha", alpha, above=0)  # NaN or inf would train NaNs


def train_point(
    tok,
    r: int,
    alpha: int,
    seed: int = 0,
    limit: int | None = None,
    rslora: bool = False,
    *,
    model_id: str = MODEL_ID,
) -> Point:
    """Train LoRA (all linear layers, rank ``r``, ``lora_alpha``; ``rslora``: scale alpha/sqrt(r))
    from a fresh base of ``model_id`` (``tok`` must be its tokenizer) and score it.

    Training arguments are ``labkit.tuners.peft_methods.TRAIN_ARGS["lora"]`` (same epochs, so the same number of
    steps, for every point); ``seed`` sets the adapter init and the data order. ``limit`` cuts the
    held-out questions (None: all 84).
    """
    from labkit.training import finetune

    _check_rank_alpha(r, alpha)
    model = peft_methods.attach(
        model_id, "lora", seed=seed, r=int(r), lora_alpha=alpha, use_rslora=bool(rslora)
    )
    run = finetune.train(
        model, tok, seed=seed, data_seed=seed, disable_tqdm=True, **peft_methods.TRAIN_ARGS["lora"]
    )
    scored = finetune.evaluate_chat(model, tok, "test", limit=limit)
    correct = [p == ref for p, ref in zip(scored["predictions"], scored["references"], strict=True)]
    val = finetune.chat_loss(model, tok, "validation")
    train = finetune.chat_loss(model, tok, "train")
    return Point(
        r=int(r),
        alpha=alpha,
        seed=seed,
        steps=run.steps,
        losses=list(run.losses),
        val_loss=val,
        correct=correct,
        rslora=bool(rslora),
        train_loss=train,
    )


def update_size(  # noqa: PLR0913 (one measurement: its model, rank, scale rule, steps, layers)
    tok,
    r: int,
    alpha: float,
    use_rslora: bool = False,
    steps: int = 3,
    lr: float = 3e-3,
    *,
    target_modules: str | list[str] = "all-linear",
    layers_to_transform: list[int] | None = None,
    model_id: str = MODEL_ID,
) -> float:
    """Mean ``|s·B·A| / |W|`` (Frobenius) over the adapted layers of ``model_id`` (``tok``: its
    tokenizer) after ``steps`` AdamW steps.

    ``s`` is peft's scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``. The steps
    use the first 16 training examples as one batch, seed 0, so only ``r``, ``alpha``, the
    scaling rule and the adapted layers (``target_modules``, ``layers_to_transform``: peft's
    options, all linear layers by default) differ between calls.
    """
    import torch

    from labkit.data import loaders
    from labkit.training import finetune

    _check_rank_alpha(r, alpha)
    steps, lr = checks.positive("steps", steps), checks.number("lr", lr, above=0)
    where = {"target_modules": target_modules}
    if layers_to_transform is not None:
        where["layers_to_transform"] = layers_to_transform
    model = peft_methods.attach(
        model_id, "lora", seed=0, r=int(r), lora_alpha=alpha, use_rslora=use_rslora, **where
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
        "eval": "correct answers on all 84 test questions; answer loss on the validation split "
        "and on the train split after the last step",
    }


def _run(point: study.Point, seed: int) -> dict[str, Any]:
    """One point of the benchmark: :func:`train_point` on all 84 held-out questions."""
    from labkit.models import zoo

    rs = point.get("rslora", False)
    p = train_point(zoo.load_tokenizer(MODEL_ID), point["r"], point["alpha"], seed=seed, rslora=rs)
    return {
        "steps": p.steps,
        "losses": p.losses,
        "val_loss": p.val_loss,
        "train_loss": p.train_loss,
        "correct": p.correct,
    }


STUDY = study.Study(
    name="lora_rank_alpha",
    points=tuple({"r": r, "alpha": a} for r, a in GRID)
    + tuple({"r": r, "alpha": a, "rslora": True} for r, a in RSLORA_GRID),
    seeds=SEEDS,
    run=_run,
    settings=settings,
)
load = STUDY.load


def summary(
    record: dict[str, Any], extra: list[Point] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """Per (r, alpha, rslora): exact match, validation loss, and the validation loss over the
    train-split loss after the last step (generalisation ratio) over the seeds (min, mean, max),
    and the validation minus train-split loss (``gap_min``, ``gap_max``, nats/token): a ratio of
    two near-zero losses magnifies a tiny gap.

    ``extra`` adds points trained elsewhere (the notebook's seed 0); exact match counts the first
    ``limit`` held-out questions (None: all the record scored), so all seeds are scored alike.
    """
    limit = study.question_limit(limit)
    out = []
    for point in record["settings"]["points"]:
        r, alpha, rs = point["r"], point["alpha"], point.get("rslora", False)
        rows = [p for p in study.runs_of(record, point) if p.get("rslora", False) == rs]
        rows += [
            {
                "val_loss": p.val_loss,
                "correct": p.correct,
                "seed": p.seed,
                "train_loss": p.train_loss,
            }
            for p in extra
            if (p.r, p.alpha, p.rslora) == (r, alpha, rs)
        ]
        if not rows:
            raise LabkitError(
                f"record has no point r={r}, alpha={alpha}{', rsLoRA' if rs else ''}; "
                f"re-make it: {STUDY.rerun}"
            )
        n = limit or min(len(p["correct"]) for p in rows)
        if any(len(p["correct"]) < n for p in rows):
            raise LabkitError(f"exact match over {n} questions asked; some points scored fewer")
        em = study.spread([sum(p["correct"][:n]) / n for p in rows])
        val = study.spread([p["val_loss"] for p in rows])
        ratio = study.spread([p["val_loss"] / p["train_loss"] for p in rows])
        gap = study.spread([p["val_loss"] - p["train_loss"] for p in rows])
        out.append(
            {
                "r": r,
                "alpha": alpha,
                "rslora": rs,
                "scale": alpha / r**0.5 if rs else alpha / r,
                "seeds": sorted(p["seed"] for p in rows),
                "questions": n,
                "em_min": em.min,
                "em_mean": em.mean,
                "em_max": em.max,
                "val_min": val.min,
                "val_mean": val.mean,
                "val_max": val.max,
                "ratio_min": ratio.min,
                "ratio_max": ratio.max,
                "gap_min": gap.min,
                "gap_max": gap.max,
            }
        )
    return out


def name(row: dict[str, Any]) -> str:
    """``r=8, alpha=16`` (``, rsLoRA`` when the point uses alpha/sqrt(r)); a row that carries its
    own ``name`` (another study's configuration, e.g. a PEFT method's recipe) keeps it."""
    if "name" in row:
        return row["name"]
    return f"r={row['r']}, alpha={row['alpha']}" + (", rsLoRA" if row.get("rslora") else "")


def verdict(a: dict[str, Any], b: dict[str, Any], digits: int = 3) -> str:
    """Compare the validation loss of two :func:`summary` rows (or any rows with ``seeds``,
    ``val_min``, ``val_max`` and a ``name``) against their spread over seeds.

    A finding needs three seeds on each side and a gap between the two seed ranges larger than
    the ranges' widths added (conservative: three seeds understate the spread). ``digits``:
    decimals of the gap and widths printed (raise it when the two are close).
    """
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 8:
        raise LabkitError(f"digits must be an integer from 1 to 8, got {digits!r}")
    seeds = min(len(a["seeds"]), len(b["seeds"]))
    if seeds < 3:
        return f"only {seeds} seed(s): no conclusion"
    widths = (a["val_max"] - a["val_min"]) + (b["val_max"] - b["val_min"])
    for low, high in ((a, b), (b, a)):
        gap = high["val_min"] - low["val_max"]
        if gap > widths:
            return (
                f"{name(low)}: lower validation loss on every seed "
                f"(gap {gap:.{digits}f} > widths {widths:.{digits}f})"
            )
    return f"gap not larger than the seed ranges' widths {widths:.{digits}f}: no conclusion"
