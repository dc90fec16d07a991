"""Why memory calculators disagree (notebook 02): labkit's estimate beside a dry-run measurement,
accelerate's ``estimate-memory``, DeepSpeed's ZeRO model-state formulas and the common rules of
thumb, each gap split into named components.

- :func:`compare`: one row per calculator for one :class:`Job`; each row's ``gap`` names what
  the calculator leaves out or counts differently, in bytes, so that
  ``labkit total == row.figure + sum(row.gap.values())`` (to the byte; components are computed
  from their own sources, not as a remainder);
- :func:`accelerate_estimate`: accelerate's own functions (``calculate_maximum_sizes``,
  ``estimate_training_usage``) on the model it would build (``AutoModel`` under
  ``init_empty_weights``, fp32), locally: no hub;
- :func:`zero2_model_states`, :func:`zero3_model_states`: DeepSpeed's documented estimators
  (deepspeed is not a dependency of the course);
- :func:`dry_run_measure`: the job measured on fake tensors (:func:`labkit.memory.dryrun.fake_step`).

The calculator to play with is :mod:`labkit.memory.calculator`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.commands.estimate import estimate_training_usage
from accelerate.utils import calculate_maximum_sizes, convert_bytes
from transformers import AutoModel

import labkit
from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.memory import dryrun, estimator, measure, peak, rules
from labkit.memory.job import Breakdown, TrainingJob
from labkit.models import architecture, zoo
from labkit.models.targets import trainable_shapes

GiB = 2**30
#: What a :class:`Job` may be.
KINDS = ("training", "inference")


@dataclass(frozen=True)
class Job:
    """One job to size: a training step (``estimator.training_memory`` arguments) or inference."""

    name: str
    model: str
    kind: str = "training"
    method: str = "full"
    precision: str = "bf16-mixed"
    base_dtype: str | None = None
    batch: int = 1
    seq: int = 1024
    dtype: str = "bf16"  # inference weights
    why: str = ""

    def training(self) -> TrainingJob:
        """The training step this job sizes (every option it does not name at its default)."""
        return TrainingJob(
            method=self.method,
            precision=self.precision,
            base_dtype=self.base_dtype,
            batch=self.batch,
            seq=self.seq,
        )


#: The first row's source: labkit's sum of the parts (every gap is measured against it).
SUM_ROW = "labkit sum of parts"
#: The training jobs' second row: labkit's peak of one step (fused AdamW).
PEAK_ROW = "labkit peak (one step, fused AdamW)"

#: The three jobs of notebook 02's comparison, and why each was chosen.
JOBS = {
    "full-0.5b": Job(
        "full fine-tuning of Qwen2.5-0.5B",
        "qwen2.5-0.5b",
        method="full",
        precision="bf16-mixed",
        batch=4,
        seq=1024,
        why="the full fine-tune a learner can run on one card; its 152k vocabulary makes the "
        "loss buffer, which no tool counts, a large item",
    ),
    "lora-8b": Job(
        "LoRA r=8 (q, v) of Llama-3.1-8B",
        "llama-3.1-8b",
        method="lora",
        precision="bf16-mixed",
        base_dtype="bf16",
        batch=1,
        seq=1024,
        why="the common practitioner's job: 0.04% of the parameters train, which tools that "
        "assume every parameter trains cannot see",
    ),
    "inference-8b": Job(
        "inference of Llama-3.1-8B",
        "llama-3.1-8b",
        kind="inference",
        dtype="bf16",
        batch=1,
        seq=4096,
        why="serving a model: weights plus KV cache, where the rules of thumb are used most",
    ),
}


@dataclass
class Row:
    """One calculator's figure for a job. ``gap``: named components (bytes) with
    ``labkit total = figure + sum(gap.values())``; ``printed``: the figure as the tool prints it."""

    source: str
    figure: int
    printed: str
    counts: str
    gap: dict[str, int] = field(default_factory=dict)

    def explained(self) -> int:
        """The figure plus its named components (equals labkit's total)."""
        return self.figure + sum(self.gap.values())


# ----------------------------------------------------------------------------- the tools
def accelerate_estimate(model: str, dtype: str = "float16") -> dict[str, Any]:
    """accelerate ``estimate-memory`` for ``model``, computed locally by accelerate's own code.
    ``dtype``: the row of its table (one per ``--dtypes`` entry); the 16-bit rows (float16, and
    bfloat16 in its function) count mixed precision: optimizer = step = 2 x the fp32 size, where
    the float32 row's step is 4 x.

    The model is built as ``accelerate.commands.estimate.create_empty_model`` builds it for
    transformers (``AutoModel`` under ``init_empty_weights``, fp32: the base model, no LM head;
    buffers counted), then ``calculate_maximum_sizes`` and ``estimate_training_usage``. Returns
    ``total_size`` (fp32 bytes), ``largest_layer``, ``training`` (its parts) and what its table
    prints: ``training_figure`` = max of the parts (not their sum), ``printed`` via
    ``convert_bytes`` (GiB labelled "GB"); ``numel``/``buffers``: elements counted.
    """
    config = zoo.load_config(model)
    with init_empty_weights():
        m = AutoModel.from_config(config, dtype=torch.float32)
    total, largest = calculate_maximum_sizes(m)
    parts = estimate_training_usage(total, dtype)
    half = total / 2
    return {
        "dtype": dtype,
        "total_size": total,
        "largest_layer": largest[0],
        "training": parts,
        "training_figure": max(parts.values()),
        "inference_16bit": half,
        "printed_training": convert_bytes(max(parts.values())),
        "printed_16bit": convert_bytes(half),
        "numel": sum(p.numel() for p in m.parameters()),
        "buffers": sum(b.numel() for b in m.buffers()),
    }


def zero2_model_states(total_params: int, n_gpus: int = 1, cpu_offload: bool = False) -> int:
    """Per-GPU bytes of DeepSpeed's ``estimate_zero2_model_states_mem_needs`` (model states only):
    ``2·P + int(18·P/N)`` without offload (2 = 16-bit params; 18 = 16-bit and fp32 gradients 2+4,
    fp32 params 4, AdamW m and v 8), ``2·P`` with the optimizer offloaded. Source:
    https://github.com/deepspeedai/DeepSpeed/blob/master/deepspeed/runtime/zero/stage_1_and_2.py
    (documented at https://deepspeed.readthedocs.io/en/latest/estimator.html; before a 2024 fix it
    read ``4·P + int(16·P/N)``). Every parameter is counted as trainable."""
    positive("number of GPUs", n_gpus)
    if cpu_offload:
        return 2 * total_params
    return 2 * total_params + int(18 * total_params / n_gpus)


def zero3_model_states(
    total_params: int, largest_layer_params: int, n_gpus: int = 1, offload: str = "none"
) -> int:
    """Per-GPU bytes of DeepSpeed's ``estimate_zero3_model_states_mem_needs``: the largest layer
    gathered (4 B × its parameters) plus, by ``offload``: ``none`` 18·P/N, ``optimizer``
    2·P/N, ``all`` nothing more. Source:
    https://github.com/deepspeedai/DeepSpeed/blob/master/deepspeed/runtime/zero/stage3.py
    (https://deepspeed.readthedocs.io/en/latest/estimator.html)."""
    positive("number of GPUs", n_gpus)
    choice("offload", offload, ("none", "optimizer", "all"))
    per = {"none": 18, "optimizer": 2, "all": 0}[offload]
    return 4 * largest_layer_params + int(per * total_params / n_gpus)


def largest_layer_params(model: str) -> int:
    """DeepSpeed's largest layer: the most parameters one module holds itself (``recurse=False``)."""
    per: dict[str, int] = {}
    for name, shape in architecture.param_shapes(model).items():
        owner = name.rsplit(".", 1)[0]
        per[owner] = per.get(owner, 0) + math.prod(shape)
    return max(per.values())


def deepspeed_printed(nbytes: int) -> str:
    """How DeepSpeed's estimators print a figure: GiB, labelled "GB"."""
    return f"{nbytes / 2**30:6.2f}GB".strip()


def printed_bytes(text: str) -> tuple[float, float]:
    """A printed size ("13.98 GB", "9.20GB (...)") read both ways: (binary: GB = 2**30 bytes,
    as accelerate and DeepSpeed compute it; decimal: GB = 1e9, as the label says)."""
    found = re.match(r"\s*([0-9.]+)\s*(bytes|KB|MB|GB|TB)", text)
    if not found:
        raise LabkitError(f"cannot read a size from {text!r}; accepted: e.g. '13.98 GB'")
    power = ("bytes", "KB", "MB", "GB", "TB").index(found.group(2))
    value = float(found.group(1))
    return value * 1024**power, value * 1000**power


# ----------------------------------------------------------------------------- the comparison
def labkit_breakdown(job: Job) -> Breakdown:
    """labkit's estimate of ``job`` (training: one GPU; inference: with the prefill's peak)."""
    choice("job kind", job.kind, KINDS)
    if job.kind == "inference":
        return estimator.inference_memory(
            job.model, dtype=job.dtype, batch=job.batch, context=job.seq, prefill=True
        )
    return estimator.training_memory(job.model, job.training())


def dry_run_measure(job: Job) -> dict[str, int]:
    """The job measured by a dry run on fake CPU tensors (no memory used).

    Training: one forward + loss of the job's fake model (:func:`labkit.memory.dryrun.fake_step`:
    method applied, the bytes autograd saves), a gradient per trainable tensor in its dtype (what
    backward leaves), then a real ``torch.optim.AdamW`` step and
    :func:`labkit.memory.measure.state_bytes` (weights, gradients, optimizer state as tensors).
    Inference: the fake model's weights plus :func:`labkit.memory.dryrun.prefill_peak`.
    """
    config = zoo.load_config(job.model)
    if job.kind == "inference":
        model, _ = dryrun.fake_model(config, dtype=job.dtype)
        weights = measure.state_bytes(model).weights
        peak = dryrun.prefill_peak(job.model, job.batch, job.seq, job.dtype)["peak"]
        return {"weights": weights, "prefill_peak": peak, "total": weights + peak}
    step = dryrun.fake_step(config, job.training())
    with step.mode:
        for p in step.model.parameters():  # what backward would leave: one gradient per
            if p.requires_grad:  # trainable tensor, in its dtype (skipping backward halves the
                p.grad = torch.zeros_like(p)  # time; nothing is saved for backward after the loss)
        opt = measure.make_optimizer(step.model, "adamw")
        opt.step()
        st = measure.state_bytes(step.model, opt)
    out = {
        "weights": st.weights + step.saved.param_copies,
        "gradients": st.gradients,
        "optimizer": st.optimizer,
        "activations": step.saved.activations,
        "logits": step.saved.logits,
    }
    out["total"] = sum(out.values())
    return out


def _parts(b: Breakdown, per_param: dict[str, float], count: int, names: dict[str, str]):
    """Per model-state part: labkit's bytes minus the tool's ``per_param`` bytes × ``count``."""
    return {names[k]: getattr(b, k) - int(v * count) for k, v in per_param.items()}


def _left_out(b: Breakdown) -> dict[str, int]:
    return {
        "activations left out": b.activations,
        "logits / loss buffer left out": b.logits,
        "transient left out (output logits + loss gradient)": b.transient,
    }


def _named(how: dict[str, str]) -> dict[str, str]:
    """The names of the model-state gaps: "weights: <how>", "gradients: <how>", ..."""
    return {k: f"{k}: {how[k]}" for k in ("weights", "gradients", "optimizer")}


def _gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB"


def compare(job: Job | str) -> list[Row]:
    """labkit's figure for ``job`` beside the other calculators', each gap in named components.

    Rows: labkit's sum of the parts; (training) labkit's peak of one step; the dry-run
    measurement; accelerate ``estimate-memory``; (training) DeepSpeed ZeRO-2 and ZeRO-3 on one
    GPU without offload; the rules of thumb in :mod:`labkit.memory.rules` that people apply to
    the job. For every row ``row.explained() == rows[0].figure``.
    """
    if isinstance(job, str):
        if job not in JOBS:
            raise labkit.unknown("job", job, tuple(JOBS))
        job = JOBS[job]
    b = labkit_breakdown(job)
    counts = b.details["regime"]
    if job.kind == "inference":
        counts = f"{job.dtype} weights, KV cache in {b.details['kv_dtype']}"
    rows = [Row(SUM_ROW, b.total, _gib(b.total), counts)]
    acc = accelerate_estimate(job.model)
    if job.kind == "inference":
        return rows + _inference_rows(job, b, acc)
    return rows + [_peak_row(job, b)] + _training_rows(job, b, acc)


def _peak_row(job: Job, b: Breakdown) -> Row:
    """labkit's peak of one step (fused AdamW, the Trainer's default), set against the sum."""
    p = peak.training_peak(job.model, job.training(), impl="fused")
    return Row(
        PEAK_ROW,
        p.peak,
        _gib(p.peak),
        f"peak.training_peak, in {p.phase}",
        {"the step's peak, not the sum of the parts": b.total - p.peak},
    )


def _inference_rows(job: Job, b: Breakdown, acc: dict[str, Any]) -> list[Row]:
    """The dry run, accelerate's float16 'Total Size' and the two weight rules, for inference."""
    P = architecture.count_parameters(job.model)
    dry = dry_run_measure(job)
    beyond = b.total - b.weights - dry["prefill_peak"]
    left_out = {
        "KV cache left out": b.kv_cache,
        "logits left out": b.logits,
        "prefill peak beyond KV + logits left out": b.transient,
    }
    weights16 = rules.rule_weights(P)
    twice = rules.rule_inference_2x(P)
    return [
        Row(  # labkit's inference figure takes its prefill peak from this same dry run
            "dry run (labkit's own prefill peak)",
            dry["total"],
            _gib(dry["total"]),
            "weights of the fake model + the prefill's peak of live tensors",
            {"KV cache + decode logits beyond the prefill peak": beyond} if beyond > 0 else {},
        ),
        Row(
            "accelerate estimate-memory",
            int(acc["inference_16bit"]),
            acc["printed_16bit"] + " (float16 'Total Size')",
            "AutoModel's parameters and buffers at 2 B",
            {
                "LM head (AutoModel has none)": 2 * _head_params(job.model),
                "buffers counted as weights": -2 * acc["buffers"],
                **left_out,
            },
        ),
        Row(
            "rule: P x 2 bytes (fp16 weights)",
            int(weights16),
            _gib(weights16),
            "16-bit weights only",
            dict(left_out),
        ),
        Row(
            "rule: inference = 2x the weights",
            int(twice),
            _gib(twice),
            "a second copy of the weights for everything else",
            {
                "KV + logits + prefill instead of a second copy of the weights": b.kv_cache
                + b.logits
                + b.transient
                - int(weights16)
            },
        ),
    ]


def _head_params(model: str) -> int:
    """The LM head's parameters (0 when tied to the embeddings)."""
    if architecture.shape_of(model).tied:
        return 0
    return math.prod(architecture.param_shapes(model)["lm_head.weight"])


def _training_rows(job: Job, b: Breakdown, acc: dict[str, Any]) -> list[Row]:
    lora = job.method in {"lora", "qlora"}
    trainable = "trainable vs all parameters" if lora else ""
    return [
        _dry_run_row(job, b),
        _accelerate_row(b, acc, trainable, architecture.count_parameters(job.model)),
        *_deepspeed_rows(job, b, trainable),
        *_rule_rows(job, b, trainable),
    ]


def _dry_run_row(job: Job, b: Breakdown) -> Row:
    dry = dry_run_measure(job)
    gap = {"transient (output logits + loss gradient; not saved tensors)": b.transient}
    if job.method in {"lora", "qlora"} and job.training().precision.mixed:
        # autocast caches these but autograd does not save them (no gradient flows into the first
        # adapted block's input), so the saved-tensor measurement does not see them
        shapes = trainable_shapes(job.model, job.method, r=8, targets="default")
        first_a = 2 * sum(
            math.prod(s) for n, s in shapes.items() if ".layers.0." in n and "lora_A" in n
        )
        if first_a:
            gap["autocast copies of block 0's lora_A (cached, not saved for backward)"] = first_a
    return Row(
        "dry run (measured)",
        dry["total"],
        _gib(dry["total"]),
        "fake-tensor step: saved tensors, then AdamW step, states as tensors",
        gap,
    )


def _accelerate_row(b: Breakdown, acc: dict[str, Any], trainable: str, P: int) -> Row:
    parts = acc["training"]
    how = {
        "weights": trainable or "fp32 + autocast's 2 B copies vs fp32",
        "gradients": trainable or "fp32 vs 4 + 2 (fp32 + 16-bit)",
        "optimizer": trainable or "AdamW step counters (4 B per tensor)",
    }
    gap = {
        "max instead of sum (its model + gradients parts)": parts["model"] + parts["gradients"],
        "AutoModel: no LM head, buffers counted": 18 * (P - acc["numel"] - acc["buffers"]),
        **_parts(b, {"weights": 4, "gradients": 6, "optimizer": 8}, P, _named(how)),
        **_left_out(b),
    }
    return Row(
        "accelerate estimate-memory",
        int(acc["training_figure"]),
        f"{acc['printed_training']} ({acc['dtype']} 'Training using Adam')",
        "max(model 4, gradients 6, Adam 8, step 8 B/param) of AutoModel",
        gap,
    )


def _deepspeed_rows(job: Job, b: Breakdown, trainable: str) -> list[Row]:
    """ZeRO-2 and ZeRO-3 on one GPU, no offload: DeepSpeed counts 6 B of weights (16-bit + fp32
    master), 6 of gradients (16-bit + fp32) and 8 of Adam state for every parameter."""
    lora = job.method in {"lora", "qlora"}
    p_ds = architecture.count_parameters(job.model) + (b.trainable_parameters if lora else 0)
    how = {
        "weights": trainable or "fp32 + autocast's copies vs 2 + 4 (16-bit + master)",
        "gradients": trainable or "fp32 only vs 2 + 4 (16-bit + fp32)",
        "optimizer": trainable or "AdamW step counters (4 B per tensor)",
    }
    parts = _parts(b, {"weights": 6, "gradients": 6, "optimizer": 8}, p_ds, _named(how))
    z2 = zero2_model_states(p_ds)
    ll = largest_layer_params(job.model)
    z3 = zero3_model_states(p_ds, ll)
    return [
        Row(
            "DeepSpeed ZeRO-2 (1 GPU)",
            z2,
            deepspeed_printed(z2),
            "model states, 2 + 18 B for every parameter",
            {**parts, **_left_out(b)},
        ),
        Row(
            "DeepSpeed ZeRO-3 (1 GPU)",
            z3,
            deepspeed_printed(z3),
            "4 B x largest layer + 18 B for every parameter",
            {
                "largest layer (4 B) instead of a 16-bit copy of all": 2 * p_ds - 4 * ll,
                **parts,
                **_left_out(b),
            },
        ),
    ]


#: Per model-state part, the bytes per parameter each rule of thumb counts.
RULE_PARTS = {
    "rule: 16 B/param (ZeRO's 2+2+12 = 8x fp16)": {"weights": 6, "gradients": 2, "optimizer": 8},
    "rule: 12 B/param (2 + 2 + 8)": {"weights": 2, "gradients": 2, "optimizer": 8},
    "rule: LoRA = the 16-bit weights": {"weights": 2, "gradients": 0, "optimizer": 0},
}


def _rule_rows(job: Job, b: Breakdown, trainable: str) -> list[Row]:
    """The 16 B/param rule for every job; then LoRA's "the 16-bit weights" or the 12 B/param
    rule of full fine-tuning."""
    P = architecture.count_parameters(job.model)
    if job.method in {"lora", "qlora"}:
        second = ("rule: LoRA = the 16-bit weights", rules.rule_weights(P))
        how = {
            "weights": "bf16 base + fp32 adapters",
            "gradients": trainable,
            "optimizer": trainable,
        }
    else:
        second = ("rule: 12 B/param (2 + 2 + 8)", rules.rule_training_12(P))
        how = {
            "weights": "",
            "gradients": "fp32 (AMP) vs 16-bit",
            "optimizer": "AdamW step counters (4 B per tensor)",
        }
    rows = []
    for label, value in (
        ("rule: 16 B/param (ZeRO's 2+2+12 = 8x fp16)", rules.rule_training_mixed_adamw(P)),
        second,
    ):
        per = RULE_PARTS[label]
        w = how["weights"] or (
            "fp32 + autocast's copies vs 16-bit + master"
            if per["weights"] == 6
            else "fp32 master weights left out (+ autocast's copies)"
        )
        rows.append(
            Row(
                label,
                int(value),
                _gib(value),
                " + ".join(f"{k} {v}" for k, v in per.items() if v) + " B/param, all parameters",
                {**_parts(b, per, P, _named({**how, "weights": w})), **_left_out(b)},
            )
        )
    return rows


def table(rows: list[Row], unit: int = GiB) -> str:
    """The rows as a printable table: figure, as printed, gap and its largest components."""
    total = rows[0].figure
    gap = "gap to labkit's sum"
    lines = [f"{'calculator':<44}{'figure':>10}  {'printed by the tool':<42}{gap:>20}"]
    for r in rows:
        lines.append(
            f"{r.source:<44}{r.figure / unit:>10.2f}  {r.printed:<42}{(total - r.figure) / unit:>+20.2f}"
        )
    return "\n".join(lines)
