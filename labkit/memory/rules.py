"""The rules of thumb people size memory with, and Korthikanti et al.'s activation formula next
to the course's op-by-op figure, like for like.

The rules (``rule_*``) are the figures a learner meets in blog posts and papers: "P x 2 bytes",
"8x the fp16 weights", ZeRO's 16 B/param, "12 B/param", "inference = 2x the weights", and
Korthikanti's s·b·h·(34 + 5·a·s/h) per layer. Notebook 01 and :mod:`labkit.memory.compare` set
them beside labkit's totals.

Korthikanti et al. (2022, "Reducing activation recomputation in large transformer models") count,
per GPT layer with 16-bit activations and no flash attention, s·b·h·(34 + 5·a·s/h) bytes. Their 34
splits into the two LayerNorms' inputs plus the two linears' inputs they feed (8), the attention's
q, k, v, output-projection input and dropout mask (9) and the MLP's GeLU input and output and
dropout mask (17); their 5·a·s²·b is the softmax output (2), the attention-dropout mask (1) and the
dropout output (2). :func:`compare` sorts the course's per-layer items (``labkit.memory.estimator``, eager
attention, no checkpointing) into the same groups so the gap can be read term by term.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.checks import choice, number
from labkit.dtypes import DTYPE_BYTES
from labkit.memory import activations
from labkit.models import architecture


def _count(parameters: float) -> float:
    """The parameter count a rule multiplies, if it is a finite number >= 0 (never NaN or
    negative bytes out of a typo)."""
    number("parameters", parameters, low=0)
    return parameters


def rule_weights(parameters: float, dtype: str = "fp16") -> float:
    """The common rule "a 6B model in fp16 is 12 GB": P × bytes per parameter (whole-byte
    dtypes only; NF4's 4.127 bits per weight are in :func:`weight_bytes`)."""
    choice("dtype of the rule of thumb", dtype, DTYPE_BYTES)
    return _count(parameters) * DTYPE_BYTES[dtype]


def rule_training_8x(parameters: float) -> float:
    """The common rule "training needs at least 8× the fp16 weights" (16 B/param)."""
    return 8 * rule_weights(parameters, "fp16")


def rule_training_mixed_adamw(parameters: float) -> float:
    """Mixed-precision AdamW's 16 B/param: 2 (16-bit weights) + 2 (16-bit gradients) + 12 (fp32
    master weights, m and v), as in the ZeRO paper; the same total as "8× the fp16 weights",
    with the bytes named. Activations are not in it."""
    return (2 + 2 + 12) * _count(parameters)


def rule_training_12(parameters: float) -> float:
    """The common rule "1B params: 2 GB weights + 2 GB grads + 8 GB AdamW" (12 B/param)."""
    return 12 * _count(parameters)


def rule_inference_2x(parameters: float, dtype: str = "fp16") -> float:
    """The common rule "inference ≈ 2× the weights"."""
    return 2 * rule_weights(parameters, dtype)


def rule_activations_korthikanti(
    layers: int, hidden: int, heads: int, seq: int, batch: int
) -> float:
    """Korthikanti et al.: L · s·b·h·(34 + 5·a·s/h) bytes (16-bit, GPT block, no flash)."""
    return layers * seq * batch * hidden * (34 + 5 * heads * seq / hidden)


# ----------------------------------------------------------------------------- Korthikanti
#: Korthikanti et al.'s per-layer constants by group: bytes per s·b·h (``quadratic``: per a·s²·b).
KORTHIKANTI = {"norms": 8.0, "attention": 9.0, "mlp": 17.0, "quadratic": 5.0}
_QUADRATIC = ("attn.softmax", "attn.dropout_mask", "attn.probs")


def _group(item: str) -> str:
    if item in _QUADRATIC:
        return "quadratic"
    if "norm" in item:
        return "norms"
    return "mlp" if item.startswith("mlp") else "attention"


@dataclass(frozen=True)
class Comparison:
    """Per-layer coefficients of the course (``course``) and of Korthikanti (``KORTHIKANTI``).

    ``course[g]``: bytes of group ``g`` per s·b·h (per a·s²·b for ``quadratic``);
    ``course_bytes``: the course's activations (all layers plus what sits outside them: token
    ids, RoPE tables, final norm); ``formula_bytes``: L·s·b·h·(34 + 5as/h);
    ``outside``: the course's bytes outside the layers; ``items``: one layer's items in bytes.
    """

    course: dict[str, float]
    course_bytes: int
    formula_bytes: float
    outside: int
    items: dict[str, int]
    sbh: int
    as2b: int
    layers: int


def compare(
    config, seq: int, dtype: str = "bf16", batch: int = 1, *, device: str = "cuda"
) -> Comparison:
    """Korthikanti's formula and the course's figure for the same job: eager attention, no
    checkpointing, training mode (dropout as the config says), 1-byte dropout masks (CUDA;
    ``device="cpu"``: masks in the activation dtype, as a CPU step keeps them)."""
    s = architecture.shape_of(config)
    act = activations.activation_bytes(
        s, batch, seq, dtype, "eager", checkpointing=False, dropout=True, device=device
    )
    items = {k.removeprefix("block."): v for k, v in act.items.items() if k.startswith("block.")}
    sbh, as2b = seq * batch * s.hidden, s.heads * seq * seq * batch
    course = dict.fromkeys(KORTHIKANTI, 0.0)
    for name, b in items.items():
        g = _group(name)
        course[g] += b / (as2b if g == "quadratic" else sbh)
    formula = rule_activations_korthikanti(s.layers, s.hidden, s.heads, seq, batch)
    outside = act.activations - s.layers * sum(items.values())
    return Comparison(
        course=course,
        course_bytes=act.activations,
        formula_bytes=formula,
        outside=outside,
        items=items,
        sbh=sbh,
        as2b=as2b,
        layers=s.layers,
    )
