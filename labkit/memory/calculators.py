"""Why memory calculators disagree (notebook 01): labkit's estimate beside a dry-run measurement,
accelerate's ``estimate-memory``, DeepSpeed's ZeRO model-state formulas and the common rules of
thumb, each gap split into named components; and the memory calculator to play with.

- :func:`compare`: one row per calculator for one :class:`Job`; each row's ``gap`` names what
  the calculator leaves out or counts differently, in bytes, so that
  ``labkit total == row.figure + sum(row.gap.values())`` (to the byte; components are computed
  from their own sources, not as a remainder);
- :func:`accelerate_estimate`: accelerate's own functions (``calculate_maximum_sizes``,
  ``estimate_training_usage``) on the model it would build (``AutoModel`` under
  ``init_empty_weights``, fp32), locally: no hub;
- :func:`zero2_model_states`, :func:`zero3_model_states`: DeepSpeed's documented estimators
  (deepspeed is not a dependency of the course);
- :func:`calculate`, :func:`figure`, :func:`widget`: the calculator (model, method, regime,
  batch, sequence, checkpointing, GPUs, ZeRO stage, GPU memory → breakdown and verdict).

It is one module of about 650 lines because every tool's figure and its named gaps must be computed
side by side for the check that they add up to labkit's total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.memory import estimator
from labkit.models import architecture
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


#: The three jobs of notebook 01's comparison, and why each was chosen.
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
def accelerate_estimate(model: str, dtype: str = "bfloat16") -> dict[str, Any]:
    """accelerate ``estimate-memory`` for ``model``, computed locally by accelerate's own code.

    The model is built as ``accelerate.commands.estimate.create_empty_model`` builds it for
    transformers (``AutoModel`` under ``init_empty_weights``, fp32: the base model, no LM head;
    buffers counted), then ``calculate_maximum_sizes`` and ``estimate_training_usage``. Returns
    ``total_size`` (fp32 bytes), ``largest_layer``, ``training`` (its parts) and what its table
    prints: ``training_figure`` = max of the parts (not their sum), ``printed`` via
    ``convert_bytes`` (GiB labelled "GB"); ``numel``/``buffers``: elements counted.
    """
    import torch
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes, convert_bytes
    from transformers import AutoModel

    from labkit.models import zoo

    config = zoo.load_config(model)
    with init_empty_weights():
        m = AutoModel.from_config(config, dtype=torch.float32)
    total, largest = calculate_maximum_sizes(m)
    parts = estimate_training_usage(total, dtype)
    half = total / 2
    return {
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
    import re

    found = re.match(r"\s*([0-9.]+)\s*(bytes|KB|MB|GB|TB)", text)
    if not found:
        raise LabkitError(f"cannot read a size from {text!r}; accepted: e.g. '13.98 GB'")
    power = ("bytes", "KB", "MB", "GB", "TB").index(found.group(2))
    value = float(found.group(1))
    return value * 1024**power, value * 1000**power


# ----------------------------------------------------------------------------- the comparison
def labkit_breakdown(job: Job) -> estimator.Breakdown:
    """labkit's estimate of ``job`` (training: one GPU; inference: with the prefill's peak)."""
    choice("job kind", job.kind, KINDS)
    if job.kind == "inference":
        return estimator.inference_memory(
            job.model, dtype=job.dtype, batch=job.batch, context=job.seq, prefill=True
        )
    return estimator.training_memory(
        job.model,
        method=job.method,
        precision=job.precision,
        base_dtype=job.base_dtype,
        batch=job.batch,
        seq=job.seq,
    )


def dry_run_measure(job: Job) -> dict[str, int]:
    """The job measured by a dry run on fake CPU tensors (no memory used).

    Training: one forward + loss of the model built by :func:`labkit.memory.dryrun.fake_model` (method
    applied as :mod:`labkit.memory.dryrun` does), the bytes autograd saves
    (:func:`labkit.memory.measure.saved_tensor_bytes`), a gradient per trainable tensor in its dtype (what
    backward leaves), then a real ``torch.optim.AdamW`` step and :func:`labkit.memory.measure.state_bytes` (weights,
    gradients, optimizer state as tensors). Inference: the fake model's weights plus
    :func:`labkit.memory.dryrun.prefill_peak`.
    """
    import contextlib

    import torch

    from labkit.memory import dryrun, measure
    from labkit.models import zoo

    config = zoo.load_config(job.model)
    if job.kind == "inference":
        model, mode = dryrun.fake_model(config, dtype=job.dtype)
        weights = measure.state_bytes(model).weights
        peak = dryrun.prefill_peak(job.model, job.batch, job.seq, job.dtype)["peak"]
        return {"weights": weights, "prefill_peak": peak, "total": weights + peak}
    mixed = job.precision.endswith("-mixed")
    act = "fp32" if job.precision == "fp32" else job.precision[:4]
    weights_dtype = job.base_dtype or ("fp32" if mixed or job.precision == "fp32" else act)

    def prepare(m):
        return dryrun._apply_method(
            m, config, job.method, r=8, targets="default", adapter_dtype="fp32", k=0
        )

    model, mode = dryrun.fake_model(config, dtype=weights_dtype, prepare=prepare)
    with mode:
        ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (job.batch, job.seq))
        cast = (
            torch.autocast("cpu", dtype=dryrun.TORCH_DTYPES[act])
            if mixed
            else contextlib.nullcontext()
        )
        with cast, dryrun._unpacked_positions():
            saved = measure.saved_tensor_bytes(model, ids, checkpointing=False, backward=False)
        for p in model.parameters():  # what backward would leave: one gradient per trainable
            if p.requires_grad:  # tensor, in its dtype (skipping backward halves the time;
                p.grad = torch.zeros_like(p)  # nothing is saved for backward after the loss)
        opt = measure.make_optimizer(model, "adamw")
        opt.step()
        st = measure.state_bytes(model, opt)
    out = {
        "weights": st.weights + saved.param_copies,
        "gradients": st.gradients,
        "optimizer": st.optimizer,
        "activations": saved.activations,
        "logits": saved.logits,
    }
    out["total"] = sum(out.values())
    return out


def _parts(b: estimator.Breakdown, per_param: dict[str, float], count: int, names: dict[str, str]):
    """Per model-state part: labkit's bytes minus the tool's ``per_param`` bytes × ``count``."""
    return {names[k]: getattr(b, k) - int(v * count) for k, v in per_param.items()}


def _left_out(b: estimator.Breakdown) -> dict[str, int]:
    return {
        "activations left out": b.activations,
        "logits / loss buffer left out": b.logits,
        "transient left out (output logits + loss gradient)": b.transient,
    }


def compare(job: Job | str) -> list[Row]:
    """labkit's figure for ``job`` beside the other calculators', each gap in named components.

    Rows: labkit; the dry-run measurement; accelerate ``estimate-memory``; (training) DeepSpeed
    ZeRO-2 and ZeRO-3 on one GPU without offload; the rules of thumb in :mod:`labkit.memory.estimator`
    that people apply to the job. For every row ``row.explained() == rows[0].figure``.
    """
    if isinstance(job, str):
        if job not in JOBS:
            from labkit import unknown

            raise unknown("job", job, tuple(JOBS))
        job = JOBS[job]
    b = labkit_breakdown(job)
    P = architecture.count_parameters(job.model)
    regime = b.details.get("regime", f"{job.dtype} weights, KV cache in {job.dtype}")
    rows = [Row("labkit estimate", b.total, f"{b.total / GiB:.2f} GiB", regime)]
    dry = dry_run_measure(job)
    acc = accelerate_estimate(job.model)
    head = (
        0
        if architecture.shape_of(job.model).tied
        else math.prod(architecture.param_shapes(job.model)["lm_head.weight"])
    )
    if job.kind == "inference":
        rows.append(
            Row(
                "dry run (measured)",
                dry["total"],
                f"{dry['total'] / GiB:.2f} GiB",
                "weights of the fake model + the prefill's peak of live tensors",
                {
                    "KV cache + decode logits beyond the prefill peak": b.total
                    - b.weights
                    - dry["prefill_peak"]
                }
                if b.total - b.weights > dry["prefill_peak"]
                else {},
            )
        )
        rows.append(
            Row(
                "accelerate estimate-memory",
                int(acc["inference_16bit"]),
                acc["printed_16bit"] + " (float16 'Total Size')",
                "AutoModel's parameters and buffers at 2 B",
                {
                    "LM head (AutoModel has none)": 2 * head,
                    "buffers counted as weights": -2 * acc["buffers"],
                    "KV cache left out": b.kv_cache,
                    "logits left out": b.logits,
                    "prefill peak beyond KV + logits left out": b.transient,
                },
            )
        )
        rows.append(
            Row(
                "rule: P x 2 bytes (fp16 weights)",
                int(estimator.rule_weights(P)),
                f"{estimator.rule_weights(P) / GiB:.2f} GiB",
                "16-bit weights only",
                {
                    "KV cache left out": b.kv_cache,
                    "logits left out": b.logits,
                    "prefill peak beyond KV + logits left out": b.transient,
                },
            )
        )
        rows.append(
            Row(
                "rule: inference = 2x the weights",
                int(estimator.rule_inference_2x(P)),
                f"{estimator.rule_inference_2x(P) / GiB:.2f} GiB",
                "a second copy of the weights for everything else",
                {
                    "KV + logits + prefill instead of a second copy of the weights": b.kv_cache
                    + b.logits
                    + b.transient
                    - int(estimator.rule_weights(P))
                },
            )
        )
        return rows
    # ---- training
    lora = job.method in {"lora", "qlora"}
    first_a = 0
    if lora:  # autocast caches these but autograd does not save them (no gradient flows into
        # the first adapted block's input), so the saved-tensor measurement does not see them
        shapes = trainable_shapes(job.model, job.method, r=8, targets="default")
        first_a = 2 * sum(
            math.prod(s) for n, s in shapes.items() if ".layers.0." in n and "lora_A" in n
        )
    gap = {"transient (output logits + loss gradient; not saved tensors)": b.transient}
    if first_a and job.precision.endswith("-mixed"):
        gap["autocast copies of block 0's lora_A (cached, not saved for backward)"] = first_a
    rows.append(
        Row(
            "dry run (measured)",
            dry["total"],
            f"{dry['total'] / GiB:.2f} GiB",
            "fake-tensor step: saved tensors, then AdamW step, states as tensors",
            gap,
        )
    )
    names = {
        "weights": "weights: {}",
        "gradients": "gradients: {}",
        "optimizer": "optimizer: {}",
    }

    def named(how: dict[str, str]) -> dict[str, str]:
        return {k: v.format(how[k]) for k, v in names.items()}

    trainable = "trainable vs all parameters" if lora else ""
    parts = acc["training"]
    n_acc = acc["numel"] + acc["buffers"]
    acc_gap = {
        "max instead of sum (its model + gradients parts)": parts["model"] + parts["gradients"],
        "AutoModel: no LM head, buffers counted": 18 * (P - n_acc),
        **_parts(
            b,
            {"weights": 4, "gradients": 6, "optimizer": 8},
            P,
            named(
                {
                    "weights": trainable or "fp32 + autocast's 2 B copies vs fp32",
                    "gradients": trainable or "fp32 vs 4 + 2 (fp32 + 16-bit)",
                    "optimizer": trainable or "AdamW step counters (4 B per tensor)",
                }
            ),
        ),
        **_left_out(b),
    }
    rows.append(
        Row(
            "accelerate estimate-memory",
            int(acc["training_figure"]),
            acc["printed_training"] + " ('Training using Adam')",
            "max(model 4, gradients 6, Adam 8, step 8 B/param) of AutoModel",
            acc_gap,
        )
    )
    p_ds = P + (b.trainable_parameters if lora else 0)  # the peft model's parameters
    ds_parts = _parts(
        b,
        {"weights": 6, "gradients": 6, "optimizer": 8},
        p_ds,
        named(
            {
                "weights": trainable or "fp32 + autocast's copies vs 2 + 4 (16-bit + master)",
                "gradients": trainable or "fp32 only vs 2 + 4 (16-bit + fp32)",
                "optimizer": trainable or "AdamW step counters (4 B per tensor)",
            }
        ),
    )
    z2 = zero2_model_states(p_ds)
    rows.append(
        Row(
            "DeepSpeed ZeRO-2 (1 GPU)",
            z2,
            deepspeed_printed(z2),
            "model states, 2 + 18 B for every parameter",
            {**ds_parts, **_left_out(b)},
        )
    )
    ll = largest_layer_params(job.model)
    z3 = zero3_model_states(p_ds, ll)
    rows.append(
        Row(
            "DeepSpeed ZeRO-3 (1 GPU)",
            z3,
            deepspeed_printed(z3),
            "4 B x largest layer + 18 B for every parameter",
            {
                "largest layer (4 B) instead of a 16-bit copy of all": 2 * p_ds - 4 * ll,
                **ds_parts,
                **_left_out(b),
            },
        )
    )
    rule16 = (
        "rule: 16 B/param (ZeRO's 2+2+12 = 8x fp16)",
        estimator.rule_training_mixed_adamw(P),
        {"weights": 6, "gradients": 2, "optimizer": 8},
    )
    if lora:
        rule_rows = [
            rule16,
            (
                "rule: LoRA = the 16-bit weights",
                estimator.rule_weights(P),
                {"weights": 2, "gradients": 0, "optimizer": 0},
            ),
        ]
        how = {
            "weights": "bf16 base + fp32 adapters",
            "gradients": trainable,
            "optimizer": trainable,
        }
    else:
        rule_rows = [
            rule16,
            (
                "rule: 12 B/param (2 + 2 + 8)",
                estimator.rule_training_12(P),
                {"weights": 2, "gradients": 2, "optimizer": 8},
            ),
        ]
        how = {
            "weights": "",
            "gradients": "fp32 (AMP) vs 16-bit",
            "optimizer": "AdamW step counters (4 B per tensor)",
        }
    for label, value, per in rule_rows:
        w = how["weights"] or (
            "fp32 + autocast's copies vs 16-bit + master"
            if per["weights"] == 6
            else "fp32 master weights left out (+ autocast's copies)"
        )
        rows.append(
            Row(
                label,
                int(value),
                f"{value / GiB:.2f} GiB",
                " + ".join(f"{k} {v}" for k, v in per.items() if v) + " B/param, all parameters",
                {**_parts(b, per, P, named({**how, "weights": w})), **_left_out(b)},
            )
        )
    return rows


def table(rows: list[Row], unit: int = GiB) -> str:
    """The rows as a printable table: figure, as printed, gap and its largest components."""
    total = rows[0].figure
    lines = [f"{'calculator':<44}{'figure':>10}  {'printed by the tool':<38}{'gap to labkit':>14}"]
    for r in rows:
        lines.append(
            f"{r.source:<44}{r.figure / unit:>10.2f}  {r.printed:<38}{(total - r.figure) / unit:>+14.2f}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the calculator
METHODS = ("full", "lora", "qlora", "inference")
REGIMES = ("fp32", "bf16-mixed", "bf16")
ZERO_STAGES = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
#: The calculator's defaults (what notebook 01 shows without a live frontend).
DEFAULTS = dict(
    model="llama-3.1-8b",
    method="lora",
    precision="bf16-mixed",
    batch=4,
    seq=2048,
    checkpointing=True,
    gpus=1,
    zero=0,
    gpu_gib=24.0,
)


def calculate(
    model: str = DEFAULTS["model"],
    method: str = DEFAULTS["method"],
    precision: str = DEFAULTS["precision"],
    batch: int = DEFAULTS["batch"],
    seq: int = DEFAULTS["seq"],
    checkpointing: bool = DEFAULTS["checkpointing"],
    gpus: int = DEFAULTS["gpus"],
    zero: int = DEFAULTS["zero"],
    gpu_gib: float = DEFAULTS["gpu_gib"],
) -> tuple[estimator.Breakdown, str]:
    """The per-GPU breakdown of a job and the verdict "fits / does not fit on N x M GiB".

    ``method``: ``full``, ``lora`` (r 8, peft's default targets, on a base in the compute dtype:
    bf16 under ``bf16-mixed``, as practitioners load it), ``qlora`` (NF4 base) or ``inference``
    (``seq`` = context, weights in bf16 unless ``fp32``; KV cache included). ``zero``: 0 (DDP:
    every GPU holds everything), 1, 2, 3 (ZeRO stages, :func:`labkit.memory.estimator.sharded`).
    """
    choice("method", method, METHODS)
    choice("precision regime", precision, REGIMES)
    positive("number of GPUs", gpus)
    if zero not in ZERO_STAGES:
        from labkit import unknown

        raise unknown("ZeRO stage", zero, tuple(ZERO_STAGES))
    if not gpu_gib > 0:
        raise LabkitError(f"GPU memory must be a positive number of GiB, got {gpu_gib!r}")
    if method == "inference":
        b = estimator.inference_memory(
            model, dtype="fp32" if precision == "fp32" else "bf16", batch=batch, context=seq
        )
        b.details["regime"] = f"inference, {'fp32' if precision == 'fp32' else 'bf16'} weights"
    else:
        if method == "qlora" and precision == "fp32":
            raise LabkitError("QLoRA computes in 16-bit; use precision bf16-mixed or bf16")
        base = "bf16" if method == "lora" and precision != "fp32" else None
        b = estimator.training_memory(
            model,
            method=method,
            precision=precision,
            base_dtype=base,
            batch=batch,
            seq=seq,
            checkpointing=checkpointing,
        )
    per = estimator.sharded(b, gpus, ZERO_STAGES[zero])
    budget = gpu_gib * GiB
    where = f"{gpus} x {gpu_gib:g} GiB"
    if per.total <= budget:
        verdict = f"fits on {where}: {per.total / GiB:.1f} GiB per GPU ({per.total / budget:.0%})"
    else:
        verdict = f"does not fit on {where}: {per.total / GiB:.1f} GiB per GPU needed"
    return per, verdict


PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache", "transient")


def figure(**kwargs: Any):
    """A stacked bar of :func:`calculate`'s per-GPU breakdown against the GPU's memory."""
    import matplotlib.pyplot as plt

    b, verdict = calculate(**kwargs)
    args = {**DEFAULTS, **kwargs}
    fig, ax = plt.subplots(figsize=(8, 3.0))
    left = 0.0
    for part in PARTS:
        v = getattr(b, part) / GiB
        if v > 0:
            ax.barh([0], [v], left=left, label=f"{part} {v:.1f}")
            left += v
    ax.axvline(args["gpu_gib"], color="k", ls="--")
    ax.text(args["gpu_gib"], 0.45, f" {args['gpu_gib']:g} GiB GPU", va="center", fontsize=8)
    ax.set(
        yticks=[],
        xlabel="GiB per GPU",
        xlim=(0, max(left, args["gpu_gib"]) * 1.15),
        title=f"{args['model']}, {b.details.get('regime', '')}\n{verdict}",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.42))
    fig.tight_layout()
    return fig


def widget():
    """The interactive calculator (ipywidgets sliders around :func:`figure`); needs ipywidgets
    and a live notebook frontend."""
    try:
        import ipywidgets as w
    except ImportError:
        raise LabkitError(
            "the interactive calculator needs ipywidgets (pip install ipywidgets); "
            "calculators.figure(...) draws the same chart without it"
        ) from None
    import matplotlib.pyplot as plt

    from labkit.models import zoo

    def show(**kw):
        figure(**kw)
        plt.show()

    return w.interact(
        show,
        model=w.Dropdown(options=zoo.catalog_names(), value=DEFAULTS["model"]),
        method=w.Dropdown(options=METHODS, value=DEFAULTS["method"]),
        precision=w.Dropdown(options=REGIMES, value=DEFAULTS["precision"]),
        batch=w.IntSlider(value=DEFAULTS["batch"], min=1, max=64),
        seq=w.IntSlider(value=DEFAULTS["seq"], min=128, max=32768, step=128),
        checkpointing=w.Checkbox(value=DEFAULTS["checkpointing"]),
        gpus=w.IntSlider(value=DEFAULTS["gpus"], min=1, max=64),
        zero=w.Dropdown(options=list(ZERO_STAGES), value=DEFAULTS["zero"]),
        gpu_gib=w.Dropdown(options=[16.0, 24.0, 40.0, 48.0, 80.0, 141.0], value=24.0),
    )
