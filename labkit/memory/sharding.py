"""Memory per GPU under data parallelism: what DDP replicates and ZeRO / FSDP shard, and how many
GPUs a job needs. The ZeRO stage -> strategy mapping is :data:`ZERO_STAGES`, written once.

What each stage shards is what DeepSpeed shards (Rajbhandari et al. 2020, "ZeRO", §5; DeepSpeed's
per-stage model-state figures): mixed-precision Adam keeps K = 12 bytes of optimizer state per
parameter, the fp32 master copy of the weights (4) and m, v (8), beside the 16-bit weights (2)
and gradients (2). Per GPU over N GPUs:

====================  ===========================
DDP                   (2 + 2 + K)·P
ZeRO-1 (P_os)         2·P + 2·P + K·P/N
ZeRO-2 (P_os+g)       2·P + (2 + K)·P/N
ZeRO-3 (P_os+g+p)     (2 + 2 + K)·P/N
====================  ===========================

The regime is DeepSpeed's: its bf16/fp16 optimizer owns the fp32 master copy of the weights, so
ZeRO-1 already shards it. labkit's breakdown counts the master copy with the weights
(:attr:`labkit.memory.job.Breakdown.master_weights`), and :func:`sharded` shards it from stage 1
on; the 16-bit weights stay whole until stage 3. Under plain PyTorch autocast the fp32 weights
are the module's own parameters, read by every forward, so stages 1 and 2 cannot shard them
there: only m and v go at stage 1, and the figures of stages 1-2 are low by the master copy's
``4·P·(1 - 1/N)``. FSDP's full shard (``fsdp``) is ZeRO-3 with one difference: with a bf16
``MixedPrecisionPolicy`` it casts each fp32 shard to bf16 only as it gathers it, so it keeps no
16-bit copy of the weights beside its fp32 shards (4 + 4 + 8 = 16 bytes per parameter under
autocast, where ``zero3`` counts the copy too, 18). What it holds gathered at a moment is
:func:`fsdp_gathered`.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import choice, number, positive
from labkit.memory.job import Breakdown
from labkit.models import architecture

#: ZeRO stage -> strategy: 0 is DDP (every GPU holds everything); 1 shards the optimizer state,
#: 2 also the gradients, 3 also the weights.
ZERO_STAGES = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
#: FSDP's full shard is ZeRO-3, less the 16-bit weight copy (see the module docstring).
STRATEGIES = (*ZERO_STAGES.values(), "fsdp")
_STAGE = {name: stage for stage, name in ZERO_STAGES.items()} | {"fsdp": 3}


def strategy(zero: int) -> str:
    """The strategy of ZeRO stage ``zero`` (0 = DDP)."""
    if isinstance(zero, bool) or zero not in ZERO_STAGES:
        raise labkit.unknown("ZeRO stage", zero, tuple(ZERO_STAGES))
    return ZERO_STAGES[zero]


def sharded(b: Breakdown, n_gpus: int, strategy: str = "ddp") -> Breakdown:
    """Per-GPU memory under data parallelism over ``n_gpus`` (see the module docstring).

    DDP replicates everything; ZeRO-1 shards the optimizer state, including the fp32 master
    weights of mixed precision (``b.master_weights``, owned by the optimizer as in DeepSpeed; not
    so under plain autocast, see the module docstring); ZeRO-2 also the gradients; ZeRO-3 / FSDP
    full shard also the remaining weights (what is gathered in flight is left out:
    :func:`fsdp_gathered`); FSDP keeps no 16-bit copy where the job has an fp32 master. The
    parts every rank keeps whole (``b.optimizer_unsharded``: AdamW's step counters) stay whole.
    Activations are per GPU (each GPU runs its own micro-batch) and never sharded.
    """
    positive("number of GPUs", n_gpus)
    choice("strategy", strategy, STRATEGIES)
    stage = _STAGE[strategy]
    whole = b.optimizer_unsharded  # scalars every rank keeps in full
    opt = math.ceil((b.optimizer - whole) / n_gpus) + whole if stage >= 1 else b.optimizer
    grads = math.ceil(b.gradients / n_gpus) if stage >= 2 else b.gradients
    master = math.ceil(b.master_weights / n_gpus) if stage >= 1 else b.master_weights
    if strategy == "fsdp" and b.master_weights:  # the fp32 shards alone: bf16 cast at gather
        weights = master
    elif stage >= 3:
        weights = math.ceil(b.weights / n_gpus)
    else:  # the master copy goes with the optimizer state; the 16-bit copies stay whole
        weights = b.weights - b.master_weights + master
    total = weights + grads + opt + b.activations + b.logits + b.kv_cache + b.transient
    details = {**b.details, "strategy": strategy, "n_gpus": n_gpus}
    return replace(
        b,
        weights=weights,
        gradients=grads,
        optimizer=opt,
        master_weights=master,
        total=total,
        details=details,
    )


#: The three regimes of notebook 01 §7's table, by who owns the fp32 master copy of the weights:
#: Megatron-LM's distributed optimizer (bf16 weights, fp32 gradients; a ZeRO-1 only), DeepSpeed's
#: bf16 mode as the ZeRO paper counts it (bf16 gradients) and plain PyTorch (autocast under DDP,
#: FSDP with a bf16 ``MixedPrecision`` for stages 2-3).
REGIMES = ("megatron", "deepspeed", "pytorch")


def regime_total(b: Breakdown, n_gpus: int, strategy: str, regime: str) -> int | None:
    """Per-GPU bytes of ``b`` (a job with an fp32 master copy, e.g. bf16 autocast) over ``n_gpus``
    at ``strategy`` (``ddp``, ``zero1``-``zero3``) in ``regime`` (:data:`REGIMES`); None where the
    regime has no such stage (Megatron beyond ZeRO-1). From :func:`sharded`:

    - ``megatron``: :func:`sharded` as it is (the optimizer owns and shards the master copy);
    - ``deepspeed``: the same with 2-byte gradients, half of the job's fp32 ones;
    - ``pytorch``: the fp32 weights are the module's, so ZeRO-1 keeps them whole; ZeRO-2 is FSDP's
      ``SHARD_GRAD_OP``: ``fsdp``'s 16/N plus a whole bf16 copy of every parameter; ZeRO-3 is ``fsdp``.

    What FSDP holds gathered in flight is left out (:func:`fsdp_gathered`).
    """
    choice("regime", regime, REGIMES)
    choice("strategy", strategy, tuple(ZERO_STAGES.values()))
    if not b.master_weights:
        raise LabkitError("regime_total: the job has no fp32 master copy (use bf16 autocast)")
    s = sharded(b, n_gpus, strategy)
    if regime == "megatron":
        return s.total if strategy in ("ddp", "zero1") else None
    if regime == "deepspeed":
        return s.total - s.gradients // 2
    if strategy == "zero1":
        return s.total + b.master_weights - s.master_weights
    if strategy == "ddp":
        return s.total
    fsdp = sharded(b, n_gpus, "fsdp").total
    return fsdp + 2 * b.trainable_parameters if strategy == "zero2" else fsdp


def fsdp_gathered(config: Any, bytes_per_param: int = 2) -> int:
    """Bytes FSDP2's full shard holds unsharded beyond its shards at the peak of a step.

    With the course's wrapping (``fully_shard`` on each decoder layer, then on the model): the
    root's own parameters (embeddings, final norm, head) form one unit, gathered from the start of
    the forward to the end of the backward; of the layers, the one in use, its unsharded
    gradients before their reduce-scatter and the next layer prefetched. In ``bytes_per_param``
    (2: a bf16 ``MixedPrecisionPolicy``). Counted from FSDP2's schedule, not measured.
    """
    positive("bytes per parameter", bytes_per_param)
    shapes = architecture.param_shapes(config)
    block = re.compile(r"\.(?:layers|h)\.(\d+)\.")  # Llama-style model.layers.N, GPT-2's h.N
    index = {name: block.search(name) for name in shapes}
    layer = sum(math.prod(s) for n, s in shapes.items() if index[n] and index[n].group(1) == "0")
    if not layer:
        raise LabkitError("fsdp_gathered: no decoder blocks named layers.N or h.N in this model")
    root = sum(math.prod(s) for n, s in shapes.items() if not index[n])
    return bytes_per_param * (root + 3 * layer)


def round_to_nodes(n_gpus: int, per_node: int = 8) -> int:
    """GPUs come in nodes of 8: up to one node any count works, beyond it whole nodes (17 → 24)."""
    positive("number of GPUs", n_gpus)
    return n_gpus if n_gpus <= per_node else per_node * math.ceil(n_gpus / per_node)


def gpus_needed(
    b: Breakdown, gpu_bytes: float, strategy: str = "zero3", max_gpus: int = 4096
) -> int:
    """The fewest GPUs (whole 8-GPU nodes beyond one node) on which ``b`` fits per GPU.

    Raises :class:`LabkitError` when even ``max_gpus`` are not enough (e.g. DDP, or activations
    alone larger than one GPU).
    """
    number("GPU memory in bytes", gpu_bytes, above=0, finite=False)
    n = 1
    while n <= max_gpus:
        n = round_to_nodes(n)
        if sharded(b, n, strategy).total <= gpu_bytes:
            return n
        n += 1
    raise LabkitError(
        f"does not fit on {max_gpus} GPUs of {gpu_bytes / 2**30:.0f} GiB with {strategy}; "
        "shard more (zero3), use checkpointing or a smaller micro-batch"
    )


def ddp_peak(step: Any) -> Any:
    """The per-GPU peak of a training step under DDP, from the one-GPU peak ``step`` (a
    :class:`labkit.memory.peak.Peak`).

    torch's ``DistributedDataParallel``, as transformers' Trainer and accelerate wrap a model
    (``gradient_as_bucket_view=False``, their default and torch's), allocates its gradient buckets
    when it wraps the model: one flat copy of every trainable gradient, in the gradient's dtype,
    into which each gradient is copied for the all-reduce. They stay allocated through every phase
    of every step, so every moment gains the gradients' bytes, and the phase of the peak does not
    move. Measured with the live-tensor trace on 2 gloo ranks (tests/test_peak.py): exact in the
    first and a later step. With ``gradient_as_bucket_view=True`` the gradients are views into the
    buckets and the first step is the one-GPU step (later steps then keep the gradients alive
    through forward: not modelled here).
    """
    buckets = step.breakdown.gradients

    def more(m: Any) -> Any:
        return replace(m, alive={**m.alive, "gradients": m.alive["gradients"] + buckets})

    return replace(
        step,
        peak=step.peak + buckets,
        label=f"{step.label} (+ DDP's gradient buckets)",
        alive=more(step).alive,
        phases={phase: v + buckets for phase, v in step.phases.items()},
        first=[more(m) for m in step.first],
        later=[more(m) for m in step.later],
        details={**step.details, "ddp_buckets": buckets},
    )
