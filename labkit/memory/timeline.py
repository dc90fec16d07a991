"""The picture of one training step (notebook 01): live bytes over the step's ops as traced
(:mod:`labkit.memory.trace`), each phase's predicted peak (:mod:`labkit.memory.peak`) on the same
axis, and the peak marked with what is alive at that moment."""

from __future__ import annotations

from typing import Any

from labkit.memory.peak import Peak
from labkit.memory.trace import PHASES, StepTrace

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


def alive_label(alive: dict[str, int], top: int = 3, unit: float = 1e6) -> str:
    """The ``top`` largest categories of a live set, e.g. "optimizer state 15.6 MB + ..."."""
    parts = sorted(((v, k) for k, v in alive.items() if v), reverse=True)[:top]
    return "\n".join(f"{SHORT.get(k, k)} {v / unit:.1f} MB" for v, k in parts)


def plot_step(ax: Any, step: StepTrace, predicted: Peak, title: str) -> None:
    """One step on ``ax``: the traced live bytes (MB) over events, the phases shaded, each phase's
    predicted peak as a dashed segment over the phase, the measured peak marked and labelled by
    what is alive then."""
    spans = phase_spans(step)
    mb = [v / 1e6 for v in step.timeline]
    for phase in PHASES:
        if phase in spans:
            lo, hi = spans[phase]
            ax.axvspan(lo, hi + 1, color=_SHADES[phase], zorder=0)
            ax.text(
                (lo + hi) / 2,
                0.02,
                phase,
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontsize=7,
                color="0.35",
            )
    ax.plot(range(len(mb)), mb, color="C0", lw=1.2, label="measured (live-tensor trace)")
    label = "predicted, per phase"
    for phase, (lo, hi) in spans.items():
        moments = [m.total for m in predicted.later if m.phase == phase]
        if moments:
            ax.hlines(
                max(moments) / 1e6, lo, hi + 1, colors="C3", linestyles="--", lw=1.2, label=label
            )
            label = None
    i = step.peak_index
    ax.plot([i], [mb[i]], "o", color="C3", ms=6)
    ax.annotate(
        f"peak {mb[i]:.2f} MB ({step.peak_phase})\n{alive_label(step.alive)}",
        (i, mb[i]),
        xytext=(0.03, 0.97),
        textcoords="axes fraction",
        va="top",
        fontsize=7,
        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8},
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
    )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("op in the step (events)")
    ax.set_ylabel("live bytes (MB)")
    ax.set_ylim(0, max(mb) * 1.35)
