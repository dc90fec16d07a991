"""Merging a LoRA adapter into a 4-bit base (notebook 13): what rounding does, and the dequantize
→ merge → re-quantize recipe, measured against the unmerged 4-bit model with the logit comparisons
of :mod:`labkit.tuners.adapters`.

- :func:`bnb_4bit_config`: ``BitsAndBytesConfig`` for 4-bit loading;
- :func:`keep_cpu_4bit_layout`: the guard against bitsandbytes' silent repacking on AVX512-BF16
  CPUs;
- :func:`check_quantized_merge` → :class:`QuantizedMerge`: the ways of merging, side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import labkit
from labkit.tuners.adapters import logits, max_logit_diff, sample_inputs


def bnb_4bit_config(
    quant_type: str = "nf4", compute_dtype: torch.dtype = torch.float32, double_quant: bool = False
):
    """``BitsAndBytesConfig`` for 4-bit loading (today's replacement of ``load_in_4bit=True``);
    ``double_quant``: QLoRA's quantized absmax constants (``bnb_4bit_use_double_quant``)."""
    from transformers import BitsAndBytesConfig

    if quant_type not in {"nf4", "fp4"}:
        raise labkit.unknown("4-bit type", quant_type, ("nf4", "fp4"))
    computes = (torch.float32, torch.bfloat16, torch.float16)
    if compute_dtype not in computes:  # an int8 one would fail only at the first forward
        raise labkit.unknown("compute dtype", compute_dtype, computes)
    if not isinstance(double_quant, bool):
        raise labkit.LabkitError(f"double_quant must be True or False, got {double_quant!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
    )


def keep_cpu_4bit_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights on AVX512-BF16 CPUs; return layers changed.

    bitsandbytes 0.49-0.50 repacks a ``Linear4bit`` weight after its first eval-mode forward
    whose input does not require grad (grad mode is not checked) on such CPUs, which silently
    breaks later LoRA training (see docs/pitfalls.md). Call it right after loading, before any
    inference.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


#: The routes of :func:`check_quantized_merge`, in the order of the recipe.
ROUTES = ("4-bit merge", "original-base merge", "dequantized merge", "re-quantized merge")


@dataclass
class QuantizedMerge:
    """Logit gaps against the unmerged 4-bit base + adapter (what QLoRA trained and serves).

    ``adapter_effect`` and the four ``*_merge`` fields are worst cases: the largest absolute
    logit gap over every real (unpadded) position and every vocabulary entry. ``changed`` holds, per
    route, the median over positions of ``|route - served| / |served - base|`` (Euclidean norms
    over the vocabulary at one position): the typical share of the adapter's effect a route
    changes. ``scores`` (when a scorer was given) holds the scorer's value for the served model
    and for every route, e.g. the exact match of their greedy answers.
    """

    adapter_effect: float
    naive_merge: float
    original_base_merge: float
    dequantized_merge: float
    requantized_merge: float
    dequantized_dtype: str
    compute_dtype: str = "float32"
    quant_type: str = "nf4"
    positions: int = 0
    changed: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def regime(self) -> str:
        """The precisions behind the numbers, for a figure's title."""
        return (
            f"{self.quant_type.upper()} base (no double quantization), {self.compute_dtype} compute, "
            f"original base in float32, dequantized route in {self.dequantized_dtype}"
        )

    def worst(self) -> dict[str, float]:
        """Per route, the largest logit gap against the served model."""
        values = (self.naive_merge, self.original_base_merge, self.dequantized_merge)
        return dict(zip(ROUTES, (*values, self.requantized_merge), strict=True))

    def rows(self) -> list[tuple[str, float]]:
        """(label, max logit gap) pairs in the order of the recipe."""
        return [
            ("adapter's own effect (4-bit + adapter vs 4-bit base)", self.adapter_effect),
            ("merge_and_unload into the 4-bit base", self.naive_merge),
            ("merge into the original full-precision base", self.original_base_merge),
            (f"dequantize to {self.dequantized_dtype}, merge there", self.dequantized_merge),
            ("... then re-quantize the merged model to 4-bit", self.requantized_merge),
        ]

    def summary(self) -> str:
        """The worst-case logit gaps, and per route the median share of the adapter's effect it
        changes (distance from the served model over the adapter's own effect) and the scores."""
        lines = [
            f"{'vs the served 4-bit base + adapter':<54} {'max logit gap':>13} {'share changed':>14}"
        ]
        changed = [None, *(self.changed.get(r) for r in ROUTES)]
        for (text, value), share in zip(self.rows(), changed, strict=True):
            tail = f"{share:>14.1%}" if share is not None else f"{'':>14}"
            lines.append(f"{text:<54} {value:>13.4f} {tail}")
        lines.append(
            "share changed: median over positions of |route - served| / |served - 4-bit base| "
            "(norms over the vocabulary)"
        )
        lines.append(f"({self.positions} positions; {self.regime})")
        if self.scores:
            lines.append("scores: " + ", ".join(f"{k} {v:.2f}" for k, v in self.scores.items()))
        return "\n".join(lines)


def _changed_share(route: torch.Tensor, served: torch.Tensor, base: torch.Tensor, mask) -> float:
    """Median over the real positions of ``|route - served| / |served - base|`` (per position,
    Euclidean norm over the vocabulary)."""
    keep = mask.bool().reshape(-1)
    vocab = served.shape[-1]
    gap = (route - served).reshape(-1, vocab)[keep].norm(dim=-1)
    effect = (served - base).reshape(-1, vocab)[keep].norm(dim=-1)
    return float((gap / effect.clamp_min(1e-12)).median())


def check_quantized_merge(
    base_folder: str | Path,
    adapter_folder: str | Path,
    work_folder: str | Path,
    inputs: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    quant_type: str = "nf4",
    compute_dtype: torch.dtype = torch.float32,
    score: Callable[[Any], float] | None = None,
) -> QuantizedMerge:
    """Measure ways of merging an adapter served on a 4-bit base, against the unmerged model.

    The reference is the 4-bit base (``compute_dtype`` for its matmuls; no double quantization,
    unlike QLoRA's recipe) + adapter, unmerged (how QLoRA trains and serves it).
    1. ``merge_and_unload`` on the 4-bit model: peft dequantizes, adds ΔW and rounds the sum back
       to 4 bits (it warns about rounding);
    2. merging into the original float32 base from ``base_folder``: for an adapter trained on the
       4-bit base (QLoRA), the base's quantization error comes back; for one trained on the
       original base, this is the trained model itself;
    3. the recipe: 4-bit base → ``dequantize(dtype)`` → adapter → ``merge_and_unload``;
    4. the recipe's merged model saved to ``work_folder`` and re-quantized to 4 bits on load.

    ``score(model) -> float`` (optional) is called on the served model and on every route's
    model, e.g. the exact match of their answers: what a reader decides on.
    """
    import warnings

    from peft import PeftModel

    from labkit.models import zoo

    qcfg = bnb_4bit_config(quant_type, compute_dtype, double_quant=False)  # named in .regime
    scores: dict[str, float] = {}

    def load_4bit(folder):
        model = zoo.load_model(str(folder), quantization_config=qcfg)
        keep_cpu_4bit_layout(model)
        return model

    def scored(name: str, model) -> torch.Tensor:
        out = logits(model, inputs)
        if score is not None:
            scores[name] = float(score(model))
        return out

    quantized = load_4bit(base_folder)
    inputs = inputs if inputs is not None else sample_inputs(quantized)
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    base_logits = logits(quantized, inputs)
    served = PeftModel.from_pretrained(quantized, str(adapter_folder))
    reference = scored("served (4-bit + adapter)", served)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(4|8)[- ]?bit.*")
        naive = served.merge_and_unload()
    routes = {ROUTES[0]: scored(ROUTES[0], naive)}

    original = zoo.load_model(str(base_folder))
    original = PeftModel.from_pretrained(original, str(adapter_folder)).merge_and_unload()
    routes[ROUTES[1]] = scored(ROUTES[1], original)

    dequantized = load_4bit(base_folder).dequantize(dtype=dtype).to(dtype)
    merged = PeftModel.from_pretrained(dequantized, str(adapter_folder)).merge_and_unload()
    routes[ROUTES[2]] = scored(ROUTES[2], merged)
    merged.save_pretrained(str(work_folder))
    routes[ROUTES[3]] = scored(ROUTES[3], load_4bit(work_folder))
    gaps = [max_logit_diff(routes[r], reference) for r in ROUTES]
    return QuantizedMerge(
        adapter_effect=max_logit_diff(reference, base_logits),
        naive_merge=gaps[0],
        original_base_merge=gaps[1],
        dequantized_merge=gaps[2],
        requantized_merge=gaps[3],
        dequantized_dtype=str(dtype).removeprefix("torch."),
        compute_dtype=str(compute_dtype).removeprefix("torch."),
        quant_type=quant_type,
        positions=int(mask.sum()),
        changed={r: _changed_share(routes[r], reference, base_logits, mask) for r in ROUTES},
        scores=scores,
    )
