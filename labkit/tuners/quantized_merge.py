"""Merging a LoRA adapter into a 4-bit base (notebook 13): what rounding does, and the dequantize
→ merge → re-quantize recipe, measured against the unmerged 4-bit model with the logit comparisons
of :mod:`labkit.tuners.adapters`.

- :func:`bnb_4bit_config`: ``BitsAndBytesConfig`` for 4-bit loading;
- :func:`keep_cpu_4bit_layout`: the guard against bitsandbytes' silent repacking on AVX512-BF16
  CPUs;
- :func:`check_quantized_merge` → :class:`QuantizedMerge`: the ways of merging, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import labkit
from labkit.tuners.adapters import logits, max_logit_diff, sample_inputs


def bnb_4bit_config(quant_type: str = "nf4", compute_dtype: torch.dtype = torch.float32):
    """``BitsAndBytesConfig`` for 4-bit loading (today's replacement of ``load_in_4bit=True``)."""
    from transformers import BitsAndBytesConfig

    if quant_type not in {"nf4", "fp4"}:
        raise labkit.unknown("4-bit type", quant_type, ("nf4", "fp4"))
    computes = (torch.float32, torch.bfloat16, torch.float16)
    if compute_dtype not in computes:  # an int8 one would fail only at the first forward
        raise labkit.unknown("compute dtype", compute_dtype, computes)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute_dtype
    )


def keep_cpu_4bit_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights on AVX512-BF16 CPUs; return layers changed.

    bitsandbytes 0.49-0.50 repacks a ``Linear4bit`` weight after its first eval-mode no-grad
    forward on such CPUs, which silently breaks later LoRA training (see docs/pitfalls.md). Call it
    right after loading, before any inference.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


@dataclass
class QuantizedMerge:
    """Logit gaps against the unmerged 4-bit base + adapter (what QLoRA trained and serves)."""

    adapter_effect: float
    naive_merge: float
    original_base_merge: float
    dequantized_merge: float
    requantized_merge: float
    dequantized_dtype: str

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
        return "\n".join(f"{label:<54} {value:.4f}" for label, value in self.rows())


def check_quantized_merge(
    base_folder: str | Path,
    adapter_folder: str | Path,
    work_folder: str | Path,
    inputs: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    quant_type: str = "nf4",
) -> QuantizedMerge:
    """Measure ways of merging an adapter served on a 4-bit base, against the unmerged model.

    The reference is the 4-bit base + adapter, unmerged (how QLoRA trains and serves it).
    1. ``merge_and_unload`` on the 4-bit model: peft dequantizes, adds ΔW and rounds the sum back
       to 4 bits (it warns about rounding);
    2. merging into the original full-precision base from ``base_folder``: the adapter was trained
       against the *quantized* weights, so the base's quantization error comes back;
    3. the recipe: 4-bit base → ``dequantize(dtype)`` → adapter → ``merge_and_unload``;
    4. the recipe's merged model saved to ``work_folder`` and re-quantized to 4 bits on load.
    """
    import warnings

    from peft import PeftModel

    from labkit.models import zoo

    qcfg = bnb_4bit_config(quant_type)

    def load_4bit(folder):
        model = zoo.load_model(str(folder), quantization_config=qcfg)
        keep_cpu_4bit_layout(model)
        return model

    quantized = load_4bit(base_folder)
    inputs = inputs if inputs is not None else sample_inputs(quantized)
    base_logits = logits(quantized, inputs)
    served = PeftModel.from_pretrained(quantized, str(adapter_folder))
    reference = logits(served, inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(4|8)[- ]?bit.*")
        naive = served.merge_and_unload()
    naive_logits = logits(naive, inputs)

    original = zoo.load_model(str(base_folder))
    original = PeftModel.from_pretrained(original, str(adapter_folder)).merge_and_unload()
    original_logits = logits(original, inputs)

    dequantized = load_4bit(base_folder).dequantize(dtype=dtype).to(dtype)
    merged = PeftModel.from_pretrained(dequantized, str(adapter_folder)).merge_and_unload()
    merged_logits = logits(merged, inputs)
    merged.save_pretrained(str(work_folder))
    requant_logits = logits(load_4bit(work_folder), inputs)
    return QuantizedMerge(
        adapter_effect=max_logit_diff(reference, base_logits),
        naive_merge=max_logit_diff(naive_logits, reference),
        original_base_merge=max_logit_diff(original_logits, reference),
        dequantized_merge=max_logit_diff(merged_logits, reference),
        requantized_merge=max_logit_diff(requant_logits, reference),
        dequantized_dtype=str(dtype).removeprefix("torch."),
    )
