"""What each lever of notebook 18 does to the moments of a training step
(:mod:`labkit.memory.peak`): the sizes of :class:`~labkit.memory.step_parts.Parts` it changes,
or the moments it rewrites. The levers run for real in :mod:`labkit.memory.levers`; the tests
hold these predictions to the live-tensor trace of those runs (:mod:`labkit.memory.trace`).

- ``loss="chunked"`` (the loss wall): no b·s·V logits, no fp32 log-softmax, no loss spike; the
  hidden states, a per-token log-sum-exp and the labels are kept; forward and backward hold one
  chunk of logits (``CHUNK_TOKENS`` × V in fp32, plus its 16-bit copy) and backward the gradients
  of the hidden states and of the head.
- ``checkpoint_every=n`` (with ``checkpointing``): every n-th block keeps only its input, the
  others keep all their activations (transformers' ``every_n_layers``).
- ``offload_activations`` (a GPU lever): the checkpointed blocks' inputs live in host memory.
- ``optimizer_in_backward``: each parameter is updated as soon as its gradient is ready and the
  gradient freed; at any moment of backward one gradient and its update's temporaries exist
  (none for a fused AdamW per parameter, ``impl="fused"``), and there is no optimizer phase. The state is alive through backward from the first step on.
- ``galore_rank=r`` (galore-torch 1.0's ``GaLoreAdamW`` on the 2-D block weights): moments of the
  gradient projected to rank r, and the projection matrix, which in fp32 is a view that keeps the
  whole SVD factor it was cut from (min(m, n)² values); the other parameters plain AdamW, and no
  step tensor (galore-torch counts steps in Python).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from labkit import LabkitError
from labkit.checks import choice
from labkit.dtypes import DTYPE_BYTES
from labkit.memory import estimator, step_parts
from labkit.models import architecture, targets

#: Tokens per chunk of the chunked loss (:func:`labkit.memory.levers.chunked_loss`).
CHUNK_TOKENS = 256
LOSSES = ("standard", "chunked")
#: The options the levers add to :func:`labkit.memory.peak.training_peak`, with their defaults.
DEFAULTS = {
    "loss": "standard",
    "checkpoint_every": 1,
    "offload_activations": False,
    "optimizer_in_backward": False,
    "galore_rank": None,
}


def check(options: dict[str, Any], job: Any) -> dict[str, Any]:
    """The lever options (defaults filled in), checked against the job; one line when wrong."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise LabkitError(
            f"unknown lever option {sorted(unknown)[0]!r}; accepted: {', '.join(DEFAULTS)}"
        )
    out = {**DEFAULTS, **options}
    choice("loss", out["loss"], LOSSES)
    n = out["checkpoint_every"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LabkitError(f"checkpoint_every must be a whole number of layers >= 1, got {n!r}")
    if n > 1 and not job.checkpointing:
        raise LabkitError("checkpoint_every needs checkpointing=True (--checkpointing)")
    if out["offload_activations"] and not job.checkpointing:
        raise LabkitError("offload_activations needs checkpointing=True (--checkpointing)")
    if out["offload_activations"] and job.device != "cuda":
        raise LabkitError("offload_activations applies to device='cuda' (host memory is the CPU's)")
    if out["optimizer_in_backward"] and job.grad_accum > 1:
        raise LabkitError(
            "optimizer_in_backward steps on each gradient as it is made: it cannot accumulate "
            "micro-batches (grad_accum must be 1)"
        )
    r = out["galore_rank"]
    if r is not None:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise LabkitError(f"galore_rank must be a whole number >= 1, got {r!r}")
        if job.method not in {"full", "frozen"} or job.optimizer != "adamw":
            raise LabkitError("galore_rank applies to full fine-tuning with optimizer='adamw'")
    return out


def active(levers: dict[str, Any]) -> bool:
    return any(levers[k] != v for k, v in DEFAULTS.items())


def _is_projected(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and re.search(r"\.(layers|h)\.\d+\.", name) is not None


def galore_parts(shapes: dict[str, tuple[int, ...]], rank: int, state_b: int) -> dict[str, int]:
    """:func:`galore_state`'s bytes by part: ``moments`` (the two moments of each 2-D block
    weight's projected gradient, rank × the longer side each), ``projections`` (the projection
    matrices: in fp32 a view that keeps the whole SVD factor, min(m, n)² values; in 16 bit a
    rank × min(m, n) copy) and ``unprojected`` (AdamW's two moments of every other parameter:
    embeddings, head, norms)."""
    parts = {"moments": 0, "projections": 0, "unprojected": 0}
    for name, shp in shapes.items():
        if _is_projected(name, shp):
            short, long_ = min(shp), max(shp)
            r = min(rank, short)
            parts["moments"] += 2 * r * long_ * state_b
            parts["projections"] += (short * short if state_b == 4 else r * short) * state_b
        else:
            parts["unprojected"] += 2 * math.prod(shp) * state_b
    return parts


def galore_state(shapes: dict[str, tuple[int, ...]], rank: int, state_b: int) -> int:
    """Bytes of galore-torch 1.0's ``GaLoreAdamW`` state: per 2-D block weight (m, n) two moments
    of the projected gradient (rank × the longer side) and the projection matrix (a view of the
    SVD factor it was cut from: min(m, n)² values in fp32, a rank × min(m, n) copy in 16 bit);
    every other parameter AdamW's two moments, no step tensor (:func:`galore_parts` by part)."""
    return sum(galore_parts(shapes, rank, state_b).values())


def _galore_temp(shapes: dict[str, tuple[int, ...]], rank: int, state_b: int) -> int:
    """The widest moment of a GaLore step beyond its state: the projected gradient's update
    (denominator and normalised update, rank × long side each) and its projection back to the
    full matrix (m × n), or AdamW's two for an unprojected tensor."""
    best = 0
    for name, shp in shapes.items():
        n = math.prod(shp)
        if _is_projected(name, shp):
            r = min(rank, min(shp))
            best = max(best, (3 * r * max(shp) + n) * state_b)
        else:
            best = max(best, 2 * n * state_b)
    return best


def apply(p: Any, levers: dict[str, Any], job: dict[str, Any], extra: dict[str, Any]) -> Any:
    """``p`` (a :class:`~labkit.memory.step_parts.Parts`) with the levers' sizes. ``extra``: what
    the levers need beyond the parts (``T`` tokens, ``vocab``, ``hidden``, ``act_b``,
    ``head_frozen``, ``unchecked_block``: one block's saved bytes without checkpointing,
    ``trainable``: the trainable shapes in the optimizer's order, ``state_b``)."""
    if levers["loss"] == "chunked":
        p = _chunked(p, extra)
    if levers["checkpoint_every"] > 1:
        p = _every(p, levers["checkpoint_every"], extra)
    if levers["offload_activations"]:
        kept = p.layer_input * _checkpointed(p.layers, levers["checkpoint_every"])
        p = replace(p, saved=p.saved - kept, layer_input=0)
    if levers["galore_rank"]:
        shapes, sb, r = extra["trainable"], extra["state_b"], levers["galore_rank"]
        p = replace(p, state=galore_state(shapes, r, sb), opt_temp=_galore_temp(shapes, r, sb))
    return p


def _chunked(p: Any, x: dict[str, Any]) -> Any:
    T, V, act_b = x["T"], x["vocab"], x["act_b"]
    c = min(CHUNK_TOKENS, T)
    chunk = c * V * (4 + (act_b if act_b != 4 else 0))
    kept = T * 4 + T * 8  # log-sum-exp (fp32) and the shifted labels (int64)
    hidden = T * x["hidden"] * act_b if x["head_frozen"] else 0  # saved by the loss itself
    return replace(
        p,
        saved=p.saved - p.lsm - p.nll_saved + kept + hidden,
        nll_saved=kept,
        lsm=0,
        logits=0,
        loss_temp=chunk + c * 32,
        head_in=chunk + c * 8 - kept,
        cache=0,
        cache_extra=0,
        hidden=0 if x["head_frozen"] else p.hidden,
        norm_temp=step_parts.NORM_TEMPS * T * x["hidden"] * 4,
        norm_out=T * x["hidden"] * act_b,
        norm_after_head=False,
    )


def _checkpointed(layers: int, n: int) -> int:
    return len(range(0, layers, n))


def _every(p: Any, n: int, x: dict[str, Any]) -> Any:
    k = _checkpointed(p.layers, n)
    whole = x["unchecked_block"]
    return replace(
        p,
        saved=p.saved + (p.layers - k) * (whole - p.layer_input),
        top_checkpointed=(p.layers - 1) % n == 0,
    )


def in_backward(moments: list[Any], state: int, largest: int, impl: str = "single") -> list[Any]:
    """The moments of a step whose optimizer runs inside backward (``optimizer_in_backward``):
    in backward the whole state (the first step creates it there; a later step holds it anyway)
    and at most one gradient, the ``largest``, with its update's temporaries: two of its size for
    a single-tensor (or foreach) AdamW per parameter, none for a fused one (``impl="fused"``:
    ``AdamW([p], fused=True)`` in the hook updates in place); no optimizer phase, and zero_grad
    finds no gradient."""
    temporaries = 0 if impl == "fused" else 2 * largest

    out = []
    for m in moments:
        if m.phase == "optimizer":
            continue
        alive = dict(m.alive)
        if m.phase in {"backward", "zero_grad"}:
            alive["optimizer_state"] = state
        if m.phase == "backward" and alive["gradients"]:
            alive["gradients"] = min(alive["gradients"], largest)
            alive["temporaries"] += temporaries
        elif m.phase != "backward":
            alive["gradients"] = 0
        out.append(step_parts.Moment(m.phase, m.label + " (optimizer in backward)", alive))
    return out


def largest_tensor(config: Any, tj: Any) -> int:
    """Values in the largest trainable tensor of the job."""
    s = architecture.shape_of(config) if estimator.is_formula_family(config) else config
    shapes = targets.trainable_shapes(
        s, tj.method, r=tj.lora_r, targets=tj.lora_targets, frozen_layers=tj.frozen_layers
    )
    return max((math.prod(v) for v in shapes.values()), default=0)


def sizes(config: Any, tj: Any, b: Any, levers: dict[str, Any]) -> dict[str, Any]:
    """What :func:`labkit.memory.lever_peak.apply` needs beyond the parts."""
    s = architecture.shape_of(config) if estimator.is_formula_family(config) else config
    layers, vocab = estimator.layers_and_vocab(s)
    table = architecture.module_table(s)
    trainable = targets.trainable_shapes(
        s, tj.method, r=tj.lora_r, targets=tj.lora_targets, frozen_layers=tj.frozen_layers
    )
    head = [m for m in table if m.name.endswith("lm_head")]
    head_trained = "lm_head.weight" in trainable or bool(
        head and head[0].tied and tj.method == "full"
    )
    unchecked = 0
    if levers["checkpoint_every"] > 1:
        items = estimator.training_memory(s, tj, checkpointing=False).details["activation_items"]
        unchecked = (
            items.get("layers", 0) or sum(v for k, v in items.items() if k.startswith("layers."))
        ) // layers
    return {
        "T": b.details["batch"] * b.details["seq"],
        "vocab": vocab,
        "hidden": next(m for m in table if m.kind == "embedding").d_out,
        "act_b": DTYPE_BYTES[tj.precision.compute],
        "head_frozen": not head_trained,
        "unchecked_block": unchecked,
        "trainable": trainable,
        "state_b": b.gradients // b.trainable_parameters if b.trainable_parameters else 4,
    }
