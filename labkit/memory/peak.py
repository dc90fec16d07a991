"""The peak of a training step, phase by phase: the largest set of tensors alive at one moment,
predicted from the components :mod:`labkit.memory.estimator` computes exactly, and held to the
live-tensor trace of real steps (:mod:`labkit.memory.trace`).

A step never holds every component at once. Its moments (the trace shows them, op by op):

- ``forward`` ends with everything autograd saved (the activations and the fp32 log-softmax of the
  loss), the b·s·V logits and the loss' own temporaries alive;
- ``backward`` starts with a spike: the loss' gradient (b·s·V fp32) and the log-softmax's gradient
  (b·s·V fp32) beside the saved log-softmax; then it frees activations as it makes gradients, and
  ends, for a trainable embedding, with every gradient alive plus the embedding's (a tied one is
  added to the head's out of place: old, new and sum alive at once);
- ``optimizer`` holds weights + gradients + state + the update's temporaries: AdamW foreach about one
  more copy of the trainable parameters, single-tensor about two of the largest, fused none;
- ``zero_grad`` finds weights + gradients + state and frees the gradients.

The first step has no optimizer state before its update; later steps carry it through forward and
backward, so the peak is the larger of the two. With gradient accumulation the gradients of the
earlier micro-batches are alive through the later ones, and each new gradient is a temporary
until it is added in place.

What the model leaves out (a CPU trace cannot see them; :func:`gpu_overheads` names them): the
CUDA context, the caching allocator's reserved-but-free blocks, cuBLAS workspaces, and on CUDA
kernels' own workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from labkit import LabkitError
from labkit.checks import choice
from labkit.dtypes import OPTIMIZERS as ESTIMATOR_OPTIMIZERS
from labkit.memory import dryrun, estimator, lever_peak, step_parts
from labkit.memory.job import Breakdown, TrainingJob, sdpa_math_kernel
from labkit.memory.step_parts import CATEGORIES, Moment  # Moment re-exported: peak.Moment
from labkit.models import architecture, targets

#: How the optimizer updates: ``foreach`` (lists of tensors at once: torch's default on CUDA),
#: ``fused`` (one kernel), ``single`` (a loop over tensors: torch's default on CPU).
IMPLS = ("foreach", "fused", "single")
#: The optimizers the peak knows: the estimator's and SGD without momentum (no state).
OPTIMIZERS = (*ESTIMATOR_OPTIMIZERS, "sgd-nomomentum")
#: The moment at the start of the loss backward with two b·s·V fp32 gradients alive (the
#: calculator's figure says what it adds to the bars when the peak is there).
LOSS_SPIKE = "loss backward: two b·s·V fp32 gradients beside the log-softmax"


def default_impl(device: str = "cuda") -> str:
    """What ``torch.optim.AdamW()`` picks when told nothing: foreach on CUDA, single-tensor on
    CPU (torch 2.13, ``_default_to_fused_or_foreach``)."""
    choice("device", device, ("cpu", "cuda"))
    return "foreach" if device == "cuda" else "single"


@dataclass
class Peak:
    """The predicted peak of a training step (bytes): ``peak`` at ``phase`` (``label`` says the
    moment, ``alive`` what is alive then, ``step`` whether the first or a later step sets it);
    ``phases``: the largest live bytes of each phase (over both steps); ``first`` / ``later``:
    every moment of each step; ``breakdown``: the estimator's components it is built from."""

    peak: int
    phase: str
    label: str
    step: str
    alive: dict[str, int]
    phases: dict[str, int]
    first: list[Moment]
    later: list[Moment]
    breakdown: Breakdown
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The figures for JSON: ``peak``, ``peak_phase``, ``peak_alive``, ``phases``;
        ``ddp_buckets``: what DDP adds on every GPU (:func:`labkit.memory.sharding.ddp_peak`),
        None on one GPU."""
        return {
            "peak": self.peak,
            "peak_phase": self.phase,
            "peak_moment": self.label,
            "peak_step": self.step,
            "peak_alive": dict(self.alive),
            "phases": dict(self.phases),
            "ddp_buckets": self.details.get("ddp_buckets"),
        }


def _check(optimizer: str, impl: str | None, device: str, lora_dropout: float, method: str) -> str:
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("device", device, ("cpu", "cuda"))
    impl = impl or default_impl(device)
    choice("optimizer implementation", impl, IMPLS)
    if impl == "fused" and optimizer != "adamw":
        raise LabkitError(f"fused applies to adamw, got --optimizer {optimizer}; accepted: adamw")
    if not isinstance(lora_dropout, int | float) or not 0 <= lora_dropout < 1:
        raise LabkitError(f"LoRA dropout must be a number in [0, 1), got {lora_dropout!r}")
    if lora_dropout and method not in {"lora", "qlora"}:
        raise LabkitError("a LoRA dropout needs --method lora or qlora")
    return impl


class NotDerived(LabkitError):
    """A lever asked of a job whose peak comes from the dry run (see :func:`derived`)."""


def derived(config: Any, job: dict[str, Any]) -> bool:
    """Whether the peak of ``job`` comes from the derivation (else from a dry run): the five
    formula families in the regimes :mod:`labkit.memory.activations` derives exactly and whose
    widest backward moment is the loss, the head or a block's MLP. Not derived: attention whose
    softmax backward holds b·a·s² temporaries (eager attention, SDPA's math kernel on CPU with
    attention dropout: at long sequences its moment is the peak), GPT-2 and
    BLOOM under autocast (their activations are the pure 16-bit derivation's), LoRA on an fp32
    base under autocast (which frozen weights' 16-bit copies a matmul keeps), frozen layers
    (which blocks keep their inputs), a LoRA dropout on an adapter that reads the attention's
    output (``o_proj``: what its dropout keeps in the first block is not derived). QLoRA with
    SDPA stays derived (its NF4 base cannot be faked: the dry run stands its compute dtype in);
    so does a bare :class:`~labkit.models.architecture.Shape` (no config to build a model
    from)."""
    if isinstance(config, architecture.Shape):  # no config to build a fake model from
        return True
    if not estimator.is_formula_family(config):
        return False
    if job["lora_dropout"] and any(
        step_parts.reads(m.name) == "attn"
        for m in targets.lora_modules(config, job["lora_targets"])
    ):
        return False
    shape = architecture.shape_of(config)
    family = shape.family
    # the softmax's backward (b·a·s² temporaries) is traced, not derived: eager attention
    # and SDPA's math kernel (CPU, attention dropout)
    if job["attention"] == "eager":
        return False
    if sdpa_math_kernel(job["attention"], job["device"], job["dropout"], shape.attn_dropout):
        return False
    mixed = job["precision"].endswith("-mixed")
    if job["method"] == "frozen":
        return False
    if mixed and family != "llama" and job["method"] != "qlora":
        return False
    return not (mixed and job["method"] == "lora" and job["tj"].weight_dtype == "fp32")


def _prepare(model, config: Any, job: dict[str, Any]):
    """Freeze / add LoRA adapters (peft, with the job's dropout) as the job trains."""
    method = job["method"]
    if method == "frozen":
        keep = set(targets.trainable_shapes(config, "frozen", frozen_layers=job["frozen_layers"]))
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
    if method not in {"lora", "qlora"}:
        return model
    from peft import LoraConfig, get_peft_model

    mods = targets.lora_modules(config, job["lora_targets"])
    lora = LoraConfig(
        r=job["lora_r"],
        target_modules=[m.name for m in mods],
        lora_dropout=job["lora_dropout"],
        fan_in_fan_out=any(m.kind == "conv1d" for m in mods),
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    adapters = job["tj"].adapters
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(dryrun.TORCH_DTYPES[adapters])
    return model


def _period(text: Any) -> int | None:
    """The smallest number of layers that repeats (``layer_types``: Gemma's sliding and global
    layers), or None when the stack does not repeat (then the dry run keeps every layer)."""
    types = list(getattr(text, "layer_types", None) or [])
    n = int(text.num_hidden_layers)
    if not types:
        return 1
    for p in range(1, n + 1):
        if all(types[i] == types[i % p] for i in range(n)) and n % p == 0:
            return p if p < n else None
    return None


def _with_layers(config: Any, layers: int):
    """``config`` with ``layers`` decoder layers (``layer_types`` cut to match)."""
    import copy

    c = copy.deepcopy(architecture.transformers_config(config))
    c.num_hidden_layers = layers
    if getattr(c, "layer_types", None):
        c.layer_types = list(c.layer_types[:layers])
    return c


def _dry_run(config: Any, job: dict[str, Any], p: step_parts.Parts) -> list[Moment]:
    """Forward and backward of one step on fake tensors, traced: the largest live set of the
    forward, and of the first and the second half of the backward (the loss spike and the top
    blocks; the bottom blocks and the embeddings), with the stored weights.

    A repeating stack is traced at 2 and 3 repeats of its period and each moment extrapolated
    to the full depth: a moment's bytes grow by a constant per layer (the saved activations, or
    the gradients, of one more layer), so two depths fix the line. A stack that does not repeat
    is traced whole."""
    text = architecture.transformers_config(config)
    period = _period(text) if hasattr(text, "num_hidden_layers") else None
    full = int(getattr(text, "num_hidden_layers", 0))
    if period is None or full <= 3 * period:
        return _traced_moments(config, job, p)
    d1, d2 = 2 * period, 3 * period
    m1 = _traced_moments(_with_layers(config, d1), job, p)
    m2 = _traced_moments(_with_layers(config, d2), job, p)
    out = []
    for a, b in zip(m1, m2, strict=True):
        alive = {
            k: a.alive[k] + (b.alive[k] - a.alive[k]) * (full - d1) // (d2 - d1) for k in a.alive
        }
        alive["weights"], alive["inputs"] = p.weights, p.inputs
        out.append(Moment(a.phase, a.label, alive))
    return out


def _traced_moments(config: Any, job: dict[str, Any], p: step_parts.Parts) -> list[Moment]:
    """One fake forward and backward of ``config``, traced (see :func:`_dry_run`)."""
    import torch

    from labkit.memory import measure, trace

    tj = job["tj"]
    mixed = tj.precision.mixed
    # QLoRA's NF4 base cannot be faked: its 16-bit compute dtype stands in (weights are replaced)
    weights = tj.precision.compute if tj.method == "qlora" else tj.weight_dtype
    model, mode = dryrun.fake_model(
        config,
        attention=job["attention"],
        dtype=weights,
        prepare=lambda m: _prepare(m, config, job),
    )
    if not job["dropout"]:
        model.eval()
    with mode, dryrun.fake_inputs_context():
        if job["checkpointing"]:
            measure.enable_checkpointing(model, reentrant=False)
        vocab = model.get_input_embeddings().num_embeddings
        # with accumulation two micro-batches: the second finds the first's gradients alive
        ids = [
            torch.randint(0, vocab, (job["batch"], job["seq"]))
            for _ in range(min(job["grad_accum"], 2))
        ]
        autocast = None
        if mixed:
            autocast = dryrun.TORCH_DTYPES[tj.precision.compute]
        tracker = trace.StepTracker()
        step = trace.trace_training(
            model,
            None,
            ids,
            steps=1,
            autocast_dtype=autocast,
            outputs_alive=job["outputs_alive"],
            tracker=tracker,
        )[0]
    phases = step.phases
    starts = [0] + [i for i in range(1, len(phases)) if phases[i] == "forward" != phases[i - 1]]
    ends = [*starts[1:], len(phases)]
    out = []
    for a, z in zip(starts, ends, strict=True):  # one micro-batch each
        out += _halves(step, tracker, p, range(a, z))
    return out


def _halves(step: Any, tracker: Any, p: step_parts.Parts, span: range) -> list[Moment]:
    """The largest live set of one micro-batch's forward, and of the first and second half of
    its backward, from a traced step."""
    bwd = [i for i in span if step.phases[i] == "backward"]
    halves = {
        "forward": [i for i in span if step.phases[i] == "forward"],
        "backward": bwd[: len(bwd) // 2],
        "backward ": bwd[len(bwd) // 2 :],
    }
    out = []
    for name, events in halves.items():
        top = max(events, key=lambda i: (step.timeline[i], -i))
        alive = dict.fromkeys(CATEGORIES, 0)
        for rec in tracker.live_at(top):
            alive[rec.category] += rec.nbytes
        alive["weights"], alive["inputs"] = p.weights, p.inputs
        label = {"forward": "forward", "backward": "backward, first half (loss, top blocks)"}
        out.append(
            Moment(
                name.strip(),
                f"{label.get(name, 'backward, second half (bottom blocks, embeddings)')} (dry run)",
                alive,
            )
        )
    return out


def _forward_moments(p: step_parts.Parts, base: dict[str, int], tag: str) -> list[Moment]:
    temps = p.logits + p.loss_temp + 4 + p.cache_extra + p.hidden + p.fwd_extra
    return [
        Moment(
            "forward",
            "loss computed: every saved activation and the logits" + tag,
            p.at(**base, weight_copies=p.copies, saved_activations=p.saved, temporaries=temps),
        )
    ]


def _backward_moments(
    p: step_parts.Parts, job: dict[str, Any], base: dict[str, int], later: bool, tag: str
):
    """The loss spike, the head, the top and bottom blocks and the end of backward."""
    held_out = job["outputs_alive"]
    # + the loss and its gradient; with checkpointing the blocks' shared inputs
    held = (p.logits + p.cache_extra if held_out else 0) + 8 + p.fwd_extra
    cache_held = p.cache if held_out else 0
    # at the bottom block: the upper blocks' cache (their saved k, v are freed), block 0's part
    # that is not saved
    bottom_cache = (cache_held * (p.layers - 1) + (p.cache_extra if held_out else 0)) // p.layers
    held_bottom = held - (p.cache_extra if held_out else 0) + bottom_cache
    g0 = base["gradients"]
    copies = p.copies_early
    after_loss = p.saved - p.nll_saved - p.lsm
    grads_top = g0 if later else p.g_head
    top_temp = p.stream + p.block_temp + p.g_down + held + (0 if later else p.tied_head)
    new_head = p.g_head_weight if later else 0
    ckpt = job["checkpointing"]
    block = p.recompute if ckpt else 0
    top_block = block if p.top_checkpointed else 0
    g_bottom = g0 if later else p.grads - p.g_first - p.g_emb
    if ckpt:
        bottom_saved = p.layer_input + p.entry_saved
    else:
        bottom_saved = p.block_saved + p.entry_saved
    spike = 2 * p.lsm + held
    head_grad = "its weight gradient" if p.g_head_weight else "the hidden-state gradient"
    logits_grad = "the b·s·V gradient" if p.lsm else "one chunk's logits gradient"  # chunked loss
    spiked = LOSS_SPIKE if p.lsm else "loss backward: no b·s·V gradient"
    return [
        Moment(
            "backward",
            f"{spiked}{tag}",
            p.at(
                **base,
                weight_copies=copies,
                saved_activations=p.saved - p.nll_saved,
                temporaries=spike,
            ),
        ),
        Moment(
            "backward",
            f"head backward: {head_grad} beside {logits_grad}{tag}",
            p.at(
                **{**base, "gradients": g0 if later else p.g_head_weight},
                weight_copies=copies,
                saved_activations=after_loss,
                temporaries=p.head_in + p.stream + new_head + held,
            ),
        ),
        *_norm_moment(p, base, copies, after_loss, held, later, tag),
        Moment(
            "backward",
            "top block backward: its MLP gradients" + tag,
            p.at(
                **{**base, "gradients": grads_top},
                weight_copies=p.copies_block,
                saved_activations=after_loss - p.head_saved + top_block,
                temporaries=top_temp,
            ),
        ),
        Moment(
            "backward",
            "bottom block backward: nearly every gradient alive" + tag,
            p.at(
                **{**base, "gradients": g_bottom},
                weight_copies=p.copies_bottom
                if p.copies_bottom is not None
                else p.copies_block
                if ckpt
                else 0,
                saved_activations=bottom_saved + block,
                temporaries=top_temp - held + held_bottom,
            ),
        ),
        Moment(
            "backward",
            "backward ends: every gradient alive" + tag,
            p.at(
                **{**base, "gradients": p.grads},
                saved_activations=cache_held,
                temporaries=(p.end_later if later else p.end)
                + held
                - p.fwd_extra
                - (p.cache_extra if held_out else 0),
            ),
        ),
    ]


def _norm_moment(
    p: step_parts.Parts,
    base: dict[str, int],
    copies: int,
    after_loss: int,
    held: int,
    later: bool,
    tag: str,
) -> list[Moment]:
    """The final norm's backward (its fp32 temporaries): the Llama family's, the peak where the
    loss spike is small (a small vocabulary, or the chunked loss of
    :mod:`labkit.memory.lever_peak`)."""
    if not p.norm_temp:
        return []
    if p.copies_norm is not None:
        copies = p.copies_norm
    elif p.norm_after_head:
        copies = p.copies_block - p.head_copy
    alive = p.at(
        **{**base, "gradients": base["gradients"] if later else p.g_head},
        weight_copies=copies,
        saved_activations=after_loss - p.norm_out,
        temporaries=p.norm_temp + held,
    )
    return [Moment("backward", "final norm backward: its fp32 temporaries" + tag, alive)]


def _moments(
    p: step_parts.Parts, job: dict[str, Any], later: bool, traced: list[Moment] | None = None
) -> list[Moment]:
    """The moments of one step (the first, or a later one that finds the optimizer state);
    ``traced``: forward and backward read from a dry run (any other causal LM), the first
    micro-batch's moments then, with gradient accumulation, the second's (which finds the
    first's gradients alive and adds each new one into them)."""
    state = p.state if later else 0
    out: list[Moment] = []
    for micro in range(min(job["grad_accum"], 2)):
        base = {
            "weights": p.weights,
            "inputs": p.inputs,
            "optimizer_state": state,
            "gradients": p.grads if micro else 0,
        }
        tag = f" (micro-batch {micro + 1})" if job["grad_accum"] > 1 else ""
        if traced is not None:
            per = len(traced) // min(job["grad_accum"], 2)
            for m in traced[micro * per : (micro + 1) * per]:
                alive = {**m.alive, **base, "gradients": m.alive["gradients"]}
                out.append(Moment(m.phase, m.label + tag, alive))
            continue
        out += _forward_moments(p, base, tag)
        out += _backward_moments(p, job, base, bool(micro), tag)
    states = {
        "weights": p.weights,
        "inputs": p.inputs,
        "gradients": p.grads,
        "optimizer_state": p.state,
    }
    out.append(Moment("optimizer", "optimizer step", p.at(**states, temporaries=p.opt_temp)))
    out.append(Moment("zero_grad", "zero_grad: the gradients are freed", p.at(**states)))
    return out


def training_peak(
    config: Any,
    job: TrainingJob | None = None,
    /,
    *,
    impl: str | None = None,
    lora_dropout: float = 0.0,
    outputs_alive: bool = True,
    **options: Any,
) -> Peak:
    """The peak of a training step of ``config`` (see the module docstring).

    ``job``: a :class:`~labkit.memory.job.TrainingJob`, or its options as keywords (as
    :func:`labkit.memory.estimator.training_memory` takes them; ``optimizer`` also takes
    ``sgd-nomomentum``, SGD without state). The levers the peak adds: ``impl``, the optimizer's
    implementation (:data:`IMPLS`; default: what torch picks on the job's ``device``);
    ``lora_dropout`` (peft's ``lora_dropout``, its default 0.0: a dropout keeps a copy of each
    adapted input); ``outputs_alive``: the model output (its b·s·V logits and KV cache) held until
    backward ends, as ``out = model(**batch); out.loss.backward()`` does; False drops it before
    backward, as transformers' Trainer does. The levers of notebook 18 are options too
    (:data:`labkit.memory.lever_peak.DEFAULTS`): ``loss="chunked"``, ``checkpoint_every`` (with
    ``checkpointing``), ``offload_activations`` (cuda), ``optimizer_in_backward``,
    ``galore_rank``.
    """
    lever_options = {k: options.pop(k) for k in list(options) if k in lever_peak.DEFAULTS}
    sgd0 = options.get("optimizer") == "sgd-nomomentum"
    if sgd0:
        options = {**options, "optimizer": "sgd"}
    tj = TrainingJob.of(job, options)
    impl = _check(
        "sgd-nomomentum" if sgd0 else tj.optimizer, impl, tj.device, lora_dropout, tj.method
    )
    b = estimator.training_memory(config, tj)
    job = {f.name: getattr(tj, f.name) for f in fields(tj)}
    job.update(
        tj=tj,
        precision=tj.precision.name,
        optimizer="sgd-nomomentum" if sgd0 else tj.optimizer,
        impl=impl,
        lora_dropout=lora_dropout,
        outputs_alive=outputs_alive,
        batch=b.details["batch"],
        seq=b.details["seq"],
    )
    levers = lever_peak.check(lever_options, tj)
    parts = step_parts.parts(config, b, job)
    is_derived = derived(config, job)
    if lever_peak.active(levers):
        if not is_derived:
            raise NotDerived(
                "the levers are predicted where the peak is derived (Llama, Mistral, Qwen2 "
                "with SDPA; GPT-2 on a GPU); this job's peak comes from the dry run (eager "
                "attention, frozen layers, GPT-2 or BLOOM under autocast, ...)"
            )
        parts = lever_peak.apply(parts, levers, job, lever_peak.sizes(config, tj, b, levers))
    traced = None if is_derived else _dry_run(config, job, parts)
    first, later = _moments(parts, job, False, traced), _moments(parts, job, True, traced)
    if levers["optimizer_in_backward"]:
        largest = lever_peak.largest_tensor(config, tj) * parts.grad_b
        first = lever_peak.in_backward(first, parts.state, largest, impl)
        later = lever_peak.in_backward(later, parts.state, largest, impl)
    top = max(((m, "first") for m in first), key=lambda x: x[0].total)
    top_later = max(((m, "later") for m in later), key=lambda x: x[0].total)
    best, step = top_later if top_later[0].total >= top[0].total else top
    phases: dict[str, int] = {}
    for m in first + later:
        phases[m.phase] = max(phases.get(m.phase, 0), m.total)
    return Peak(
        peak=best.total,
        phase=best.phase,
        label=best.label,
        step=step,
        alive=dict(best.alive),
        phases=phases,
        first=first,
        later=later,
        breakdown=b,
        details={"impl": impl, "parts": parts, "levers": levers},
    )


# ----------------------------------------------------------------------------- what a GPU adds
#: What a GPU process holds beyond the live tensors the peak counts: named and sourced, never
#: folded into the peak. Figures are ranges from the sources; the validation script measures
#: them on the card it runs on (no GPU figure has been measured for this course yet).
GPU_OVERHEADS = (
    {
        "name": "CUDA context",
        "bytes": (300 * 2**20, 2 * 2**30),
        "what": "driver, kernels and libraries loaded per process, outside PyTorch's allocator",
        "source": "S. Bekman, ml-engineering, training/performance: 0.5-2 GB, measured "
        "0.47-0.92 GB with PyTorch 2.1; course facts.md: 0.3-1 GiB",
    },
    {
        "name": "allocator reserve",
        "bytes": None,
        "what": "blocks the caching allocator holds but no tensor uses (reserved - allocated), "
        "with fragmentation; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True reduces it",
        "source": "PyTorch docs, CUDA semantics / memory management "
        "(torch.cuda.memory_reserved vs memory_allocated); measured per run by "
        "scripts/gpu_validate_memory.py",
    },
    {
        "name": "cuBLAS/cuBLASLt workspace",
        "bytes": (2**20, 32 * 2**20),
        "what": "per handle and stream: 1 MiB, 4 MiB on Ampere with >= 24 GB, 32 MiB on Hopper "
        "(CUBLASLT_WORKSPACE_SIZE), plus CUBLAS_WORKSPACE_CONFIG's buffers",
        "source": "pytorch/pytorch PR #120925 (cublasLtMatmul workspace, after NVIDIA's cuBLAS "
        "reference) and PR #83461 (CUBLAS_WORKSPACE_CONFIG)",
    },
)


H100_VISIBLE: int = int(79.1 * 2**30)
"""Bytes torch reports as an "80 GB" H100's total capacity, the low end of the 79.1-79.3 GiB
it shows (``torch.cuda.get_device_properties(0).total_memory``): the rest of the 80 GiB of HBM
is never visible to torch, so a plan for that card sizes its room from this, not 80 GiB."""


def gpu_overheads() -> list[dict[str, Any]]:
    """:data:`GPU_OVERHEADS`: the lines a GPU adds to the peak, each with its source."""
    return [dict(item) for item in GPU_OVERHEADS]


def gpu_reserve() -> int:
    """Bytes to keep free on a card beside the peak: the upper ends of :data:`GPU_OVERHEADS`'
    ranges (CUDA context, cuBLAS workspace); the allocator's reserve has no fixed size."""
    return sum(item["bytes"][1] for item in GPU_OVERHEADS if item["bytes"] is not None)
