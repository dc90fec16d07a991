"""Does a job fit? The one job -> breakdown -> verdict path behind notebook 02's calculator
(:func:`calculate`, :func:`figure`, :func:`widget`) and the ``estimate`` command
(:mod:`labkit.fit.estimate_cli`).

A training job is a :class:`labkit.memory.job.TrainingJob` (its defaults are the only ones: LoRA
on a base in the compute dtype, rank 8, peft's default targets); :func:`fit` shards its breakdown
over the GPUs (:mod:`labkit.memory.sharding`), finds the fewest GPUs it needs and says whether it
fits.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.memory import estimator, peak, sharding
from labkit.memory.job import Breakdown, TrainingJob
from labkit.models.targets import lora_modules
from labkit.models.zoo import load_config

GiB = 2**30


@dataclass
class Fit:
    """A job's memory on ``gpus`` GPUs of ``gpu_gib`` GiB: ``per_gpu`` (after sharding with
    ``strategy``), and ``gpus_needed``, the fewest GPUs it fits on fully sharded (ZeRO-3, whole
    nodes of 8 beyond one node), None when even 4096 are not enough (never 0, which would read
    as "needs none")."""

    per_gpu: Breakdown
    gpus: int
    strategy: str
    gpu_gib: float
    gpus_needed: int | None
    #: the peak of a training step per GPU (:func:`labkit.memory.peak.training_peak`; under DDP
    #: with its gradient buckets, :func:`labkit.memory.sharding.ddp_peak`), None for inference
    #: and under ZeRO sharding (whose peak is not modelled)
    peak: Any = None

    @property
    def needed(self) -> int:
        """The bytes the verdict reads: the peak of a training step when it is known, else the
        breakdown's total."""
        return self.peak.peak if self.peak is not None else self.per_gpu.total

    @property
    def fits(self) -> bool:
        return self.needed <= self.gpu_gib * GiB

    @property
    def verdict(self) -> str:
        """ "fits on 1 x 24 GiB: peak 20.1 GiB in backward (84%)" (the peak when known, else
        "32.5 GiB per GPU (a sum of the sharded parts, not a peak)") or "does not fit on ...
        needed"."""
        need, budget = self.needed, self.gpu_gib * GiB
        where = f"{self.gpus} x {self.gpu_gib:g} GiB"
        what = (
            f"peak {need / GiB:.1f} GiB in {self.peak.phase}"
            if self.peak is not None
            else f"{need / GiB:.1f} GiB per GPU (a sum of the sharded parts, not a peak)"
        )
        if self.fits:
            return f"fits on {where}: {what} ({need / budget:.0%})"
        return f"does not fit on {where}: {what} needed"


def fit(
    b: Breakdown, *, gpus: int = 1, zero: int = 0, gpu_gib: float = 80.0, peak: Any = None
) -> Fit:
    """``b`` (one GPU's breakdown) on ``gpus`` GPUs of ``gpu_gib`` GiB with ZeRO stage ``zero``
    (0: DDP, every GPU holds everything); ``peak``: the step's peak on one GPU
    (:class:`labkit.memory.peak.Peak`), which the verdict reads on one GPU and, with DDP's
    gradient buckets added, under DDP; under ZeRO the verdict reads the per-GPU total."""
    positive("number of GPUs", gpus)
    if isinstance(gpu_gib, bool) or not isinstance(gpu_gib, numbers.Real) or not gpu_gib > 0:
        raise LabkitError(f"GPU memory must be a positive number of GiB, got {gpu_gib!r}")
    strategy = sharding.strategy(zero)
    try:
        needed = sharding.gpus_needed(b, gpu_gib * GiB, "zero3")
    except LabkitError:
        needed = None  # does not fit even fully sharded
    if peak is not None and strategy == "ddp" and gpus > 1:
        peak = sharding.ddp_peak(peak)
    return Fit(
        sharding.sharded(b, gpus, strategy),
        gpus,
        strategy,
        gpu_gib,
        needed,
        peak if strategy == "ddp" else None,
    )


# ----------------------------------------------------------------------------- the notebook's
#: What the notebook-01 calculator offers.
METHODS = ("full", "lora", "qlora", "inference")
REGIMES = ("fp32", "bf16-mixed", "bf16")


@dataclass(frozen=True)
class Settings:
    """The calculator's controls, with the values notebook 02 shows without a live frontend.
    ``method="inference"``: ``seq`` is the context, weights in bf16 unless ``precision="fp32"``,
    KV cache included. ``impl``: AdamW's implementation (:data:`labkit.memory.peak.IMPLS`):
    ``foreach`` is what a plain ``torch.optim.AdamW`` runs on CUDA (a temporary copy of the
    parameters in the step), ``fused`` what transformers' Trainer runs by default on torch >= 2.8
    (``adamw_torch_fused``: no copy)."""

    model: str = "llama-3.1-8b"
    method: str = "lora"
    precision: str = "bf16-mixed"
    batch: int = 4
    seq: int = 2048
    checkpointing: bool = True
    gpus: int = 1
    zero: int = 0
    gpu_gib: float = 24.0
    impl: str = "foreach"


DEFAULTS = asdict(Settings())


def breakdown(settings: Settings) -> Breakdown:
    """One GPU's breakdown for the calculator's ``settings`` (the job's own defaults for all it
    does not set: rank 8, peft's default targets, LoRA's base in the compute dtype)."""
    choice("method", settings.method, METHODS)
    choice("precision regime", settings.precision, REGIMES)
    if settings.method == "inference":
        dtype = "fp32" if settings.precision == "fp32" else "bf16"
        return estimator.inference_memory(
            settings.model, dtype=dtype, batch=settings.batch, context=settings.seq
        )
    return estimator.training_memory(settings.model, _job(settings))


def _job(settings: Settings) -> TrainingJob:
    return TrainingJob(
        method=settings.method,
        precision=settings.precision,
        batch=settings.batch,
        seq=settings.seq,
        checkpointing=settings.checkpointing,
    )


def step_peak(settings: Settings):
    """The peak of one training step of ``settings`` on one GPU (:mod:`labkit.memory.peak`;
    :func:`fit` adds DDP's buckets over several GPUs), None for inference and under ZeRO
    sharding, whose peak is not modelled."""
    if settings.method == "inference" or settings.zero:
        return None
    return peak.training_peak(settings.model, _job(settings), impl=settings.impl)


def calculate(**settings: Any) -> tuple[Breakdown, str]:
    """The per-GPU breakdown of a job and the verdict "fits / does not fit on N x M GiB" (read
    from the peak of a training step on one GPU or under DDP, from the per-GPU total under ZeRO),
    naming the AdamW implementation when the peak is read and depends on it, and saying that a
    GPU's own overheads (CUDA context, allocator; :func:`labkit.memory.peak.gpu_overheads`) are
    not in it.

    ``settings``: any of :class:`Settings`' fields (``model``, ``method`` in :data:`METHODS`,
    ``precision`` in :data:`REGIMES`, ``batch``, ``seq``, ``checkpointing``, ``gpus``, ``zero``
    (0 = DDP, 1-3 = ZeRO stages), ``gpu_gib``, ``impl``); the others keep :data:`DEFAULTS`.
    """
    result = _fit(settings)
    return result.per_gpu, _verdict(result, {**DEFAULTS, **settings})


def _verdict(result: Fit, settings: dict[str, Any]) -> str:
    """:attr:`Fit.verdict` with the regime it reads: AdamW's implementation (only when the peak
    is read and another implementation would move it: not for a LoRA job peaking in backward)
    and "before GPU overheads"."""
    regime = ""
    if result.peak is not None:
        s = Settings(**settings)
        mine = step_peak(s).peak
        others = (i for i in peak.IMPLS if i != s.impl)
        if any(step_peak(replace(s, impl=i)).peak != mine for i in others):
            regime = f"{settings['impl']} AdamW, "
    return f"{result.verdict} ({regime}before GPU overheads)"


def _settings(settings: dict[str, Any]) -> Settings:
    names = [f.name for f in fields(Settings)]
    for name in settings:
        if name not in names:
            raise labkit.unknown("calculator setting", name, names)
    return Settings(**settings)


def _fit(settings: dict[str, Any]) -> Fit:
    s = _settings(settings)
    choice("AdamW implementation", s.impl, peak.IMPLS)
    return fit(breakdown(s), gpus=s.gpus, zero=s.zero, gpu_gib=s.gpu_gib, peak=step_peak(s))


def adapters(**settings: Any) -> str:
    """What a LoRA or QLoRA job of the calculator adds to its model, for the figure's title:
    "LoRA r=8 on q_proj, v_proj" (the job's own rank and peft's default targets for the model,
    which the calculator does not let you change); "" for full fine-tuning and inference."""
    s = _settings(settings)
    choice("method", s.method, METHODS)
    if s.method not in {"lora", "qlora"}:
        return ""
    job = _job(s)
    found = lora_modules(load_config(s.model), job.lora_targets)
    names = dict.fromkeys(m.name.rsplit(".", 1)[-1] for m in found)  # in the model's order
    return f"LoRA r={job.lora_r} on {', '.join(names)}"


PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache", "transient")
#: a part's name in the figure's legend, where the field's name would mislead
LEGEND = {"logits": "loss buffer", "optimizer": "optimizer state", "kv_cache": "KV cache"}


def _peak_note(step: Any, b: Breakdown, bars: float) -> str:
    """What the peak line adds to the stacked bars (their sum ``bars``, GiB) at its moment."""
    if step.label.startswith(peak.LOSS_SPIKE):  # one more b·s·V gradient, no block recomputed
        extra = (step.alive["temporaries"] - b.transient) / GiB
        rec = b.details.get("activation_items", {}).get("recompute_one_layer", 0) / GiB
        note = f"= bars + {extra:.1f} (a 2nd fp32 b·s·V gradient)"
        return note + (f" - {rec:.1f} (recomputed block, not alive yet)" if rec else "")
    return f"{step.peak / GiB - bars:+.1f} vs the bars"


def figure(**settings: Any):
    """A stacked bar of :func:`calculate`'s per-GPU breakdown (every part in the legend, the sum
    above the bar) against the GPU's memory, and against that memory less
    :func:`labkit.memory.peak.gpu_reserve` (when some is left)."""
    import matplotlib.pyplot as plt  # matplotlib only for the drawing
    from matplotlib.transforms import offset_copy

    result = _fit(settings)
    args = {**DEFAULTS, **settings}
    b, verdict = result.per_gpu, _verdict(result, args)
    fig, ax = plt.subplots(figsize=(8, 3.0))
    left = 0.0
    for part in PARTS:
        v = getattr(b, part) / GiB
        if v > 0:  # a part too small to see is named with a bound, not as "gradients 0.0"
            name = LEGEND.get(part, part)
            label = f"{name} {v:.1f}" if v >= 0.05 else f"{name} (<0.1)"
            ax.barh([0], [v], left=left, label=label)
            left += v
    ax.text(  # the stacked total, above the bar's end (the sum the peak line is read against)
        left,
        0.45,
        f"sum of the parts {left:.1f} GiB",
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
    )
    ax.axvline(args["gpu_gib"], color="k", ls="--", label=f"GPU {args['gpu_gib']:g} GiB")
    usable = args["gpu_gib"] - peak.gpu_reserve() / GiB  # less the CUDA context and workspace
    if usable > 0:
        ax.axvline(usable, color="0.45", ls="-.", label=f"GPU less reserve {usable:.1f} GiB")
    step = result.peak
    if step is not None:  # the largest live set, which the verdict reads
        x = step.peak / GiB
        ax.axvline(x, color="C3", ls=":", label=f"peak {x:.1f} GiB ({step.phase})")
        note = _peak_note(step, b, left)
        ax.text(  # below the axis label, outside the axes: it hides no bar and no line
            0.5,
            0.0,
            f"peak {x:.1f} ({step.phase}, red dotted line) {note}",
            transform=offset_copy(ax.transAxes, fig=fig, y=-30, units="points"),
            ha="center",
            va="top",
            fontsize=8,
            color="C3",
        )
        left = max(left, x)
    shape = f"batch {args['batch']} x {args['seq']}"
    lora = adapters(**settings)  # reads the model's config: once
    if lora:
        shape = f"{lora}, {shape}"
    if args["method"] != "inference":  # checkpointing is a training setting
        shape += ", checkpointing" if args["checkpointing"] else ", no checkpointing"
    ax.set(
        yticks=[],
        ylim=(-0.5, 0.8),  # room above the bar for its total
        xlabel="GiB per GPU (legend: each part's GiB)",
        xlim=(0, max(left, args["gpu_gib"]) * 1.15),
        title=f"{args['model']}, {args['method']}, {b.details.get('regime', '')}\n{shape}: {verdict}",
    )
    ax.title.set_fontsize(9)
    below = offset_copy(ax.transAxes, fig=fig, y=-42 if step is not None else -30, units="points")
    ax.legend(
        fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below
    )
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
            "calculator.figure(...) draws the same chart without it"
        ) from None
    import matplotlib.pyplot as plt

    from labkit.models import zoo  # the catalog's names, for the model menu

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
        zero=w.Dropdown(options=list(sharding.ZERO_STAGES), value=DEFAULTS["zero"]),
        gpu_gib=w.Dropdown(options=[16.0, 24.0, 40.0, 48.0, 80.0, 141.0], value=24.0),
        impl=w.Dropdown(options=peak.IMPLS, value=DEFAULTS["impl"]),
    )
