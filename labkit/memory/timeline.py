"""The picture of one training step (notebook 02): live bytes over the step's ops as traced
(:mod:`labkit.memory.trace`), each phase's predicted peak (:mod:`labkit.memory.peak`) on the same
axis, and the peak marked with what is alive at that moment."""

from __future__ import annotations

from typing import Any

from labkit.memory.peak import Peak
from labkit.memory.trace import PHASES, StepTrace

MiB = 2**20

#: Short names of the live-byte categories for labels.
SHORT = {
    "weights": "weights",
    "weight_copies": "16-bit weight copies",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "saved_activations": "saved activations",
    "temporaries": "temporaries",
    "inputs": "token ids",
}
_SHADES = {
    "forward": "#e8f0fb",
    "backward": "#fbeee6",
    "optimizer": "#eaf6ea",
    "zero_grad": "#f4f4f4",
}


def phase_spans(step: StepTrace) -> dict[str, tuple[int, int]]:
    """The first and last event of each phase of a traced step."""
    spans: dict[str, tuple[int, int]] = {}
    for i, phase in enumerate(step.phases):
        lo, _ = spans.get(phase, (i, i))
        spans[phase] = (lo, i)
    return spans


def alive_label(alive: dict[str, int], top: int = 3, unit: float = MiB) -> str:
    """The ``top`` largest categories of a live set, e.g. "optimizer state 14.9 MiB", and any
    further one that ties with the last of them as printed (gradients as large as the weights are
    listed too, not dropped by the order of a sort)."""
    parts = sorted(((v, k) for k, v in alive.items() if v), reverse=True)
    shown = parts[:top]
    if shown:
        last = f"{shown[-1][0] / unit:.1f}"
        shown += [(v, k) for v, k in parts[top:] if f"{v / unit:.1f}" == last]
    return "\n".join(f"{SHORT.get(k, k)} {v / unit:.1f} MiB" for v, k in shown)


def stretched(step: StepTrace, least: float = 0.12) -> tuple[list[float], dict[str, tuple]]:
    """An x position per event with each phase given at least ``least`` of the axis (the
    optimizer step and zero_grad are a handful of ops beside hundreds in forward and backward),
    and each phase's (start, end) on that axis."""
    spans = phase_spans(step)
    n = len(step.timeline)
    widths = {p: max(hi - lo + 1, least * n) for p, (lo, hi) in spans.items()}
    start, x0 = {}, 0.0
    for p in spans:
        start[p] = x0
        x0 += widths[p]
    xs = []
    for i, p in enumerate(step.phases):
        lo, hi = spans[p]
        xs.append(start[p] + (i - lo + 0.5) / (hi - lo + 1) * widths[p])
    return xs, {p: (start[p], start[p] + widths[p]) for p in spans}


def plot_step(ax: Any, step: StepTrace, predicted: Peak, title: str) -> None:
    """One step on ``ax``: the traced live bytes (MiB) over the step's ops (short phases
    stretched, :func:`stretched`), the phases shaded, each phase's predicted peak as a dashed
    segment over the phase, the measured peak marked and labelled by what is alive then."""
    xs, bands = stretched(step)
    mb = [v / MiB for v in step.timeline]
    width = max(hi for _, hi in bands.values())
    for phase in PHASES:
        if phase in bands:
            lo, hi = bands[phase]
            ax.axvspan(lo, hi, color=_SHADES[phase], zorder=0)
            narrow = hi - lo < 0.2 * width
            ax.text(
                (lo + hi) / 2,
                0.03,
                phase,
                ha="center",
                va="bottom",
                fontsize=7,
                color="0.35",
                rotation=90 if narrow else 0,
                transform=ax.get_xaxis_transform(),
            )
    ax.step(xs, mb, where="mid", color="C0", lw=1.2, label="measured (live-tensor trace)")
    label = "predicted, per phase"
    for phase, (lo, hi) in bands.items():
        moments = [m.total for m in predicted.later if m.phase == phase]
        if moments:
            ax.hlines(max(moments) / MiB, lo, hi, colors="C3", linestyles="--", lw=1.4, label=label)
            label = None
    i = step.peak_index
    ax.plot([xs[i]], [mb[i]], "o", color="C3", ms=6)
    ax.annotate(
        f"peak {mb[i]:.2f} MiB ({step.peak_phase}), largest parts:\n{alive_label(step.alive)}",
        (xs[i], mb[i]),
        xytext=(0.03, 0.97),
        textcoords="axes fraction",
        va="top",
        fontsize=7,
        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8},
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_xlabel("ops of the step, in order")
    ax.set_ylabel("live bytes (MiB)")
    ax.set_ylim(0, max(mb) * 1.4)
    ax.set_xlim(0, width)
