"""Adapters in practice: save, reload, switch, combine and merge LoRA adapters — and prove it.

The checks follow peft's own test suite: a merged model must give the same logits as the
unmerged one (``atol`` 1e-4), unmerging must restore the base weights, ``merge_and_unload`` must
leave no adapter layer behind, the merged model must differ from the base, and a merged model
saved and reloaded as a plain ``transformers`` model must give the same logits again.

- :func:`logits`, :func:`max_logit_diff`, :func:`logits_close`: compare models on fixed inputs;
- :func:`adapter_size_on_disk`, :func:`weights_size_on_disk`: what an adapter costs to ship;
- :func:`lora_layers`, :func:`no_lora_layers_left`, :func:`lora_scaling`, :func:`lora_delta`,
  :func:`merged_weight_by_hand`, :func:`hand_formula`: the merge math ``W + (alpha/r)·B·A`` (rsLoRA: ``alpha/√r``;
  DoRA: rescaled by magnitude / column norm) recomputed by hand, for ``nn.Linear``, GPT-2's
  ``Conv1D`` (``fan_in_fan_out``) and embeddings;
- :func:`merge_rounding_error`: how much of ΔW a merge stored in bf16 (or fp16) rounds away;
- :func:`check_merge_round_trip`, :func:`check_adapter_round_trip`: the whole round trip;
- :func:`mixed_batch_logits`, :func:`per_adapter_logits`, :func:`generate_mixed`: one batch
  whose rows use different adapters (peft's ``adapter_names``);
- :func:`combine`, :func:`error_line`: ``add_weighted_adapter`` and the errors learners meet.

Merging into a 4-bit base (what rounding does, and the dequantize → merge → re-quantize recipe) is
:mod:`labkit.tuners.quantized_merge`, built on the logit comparisons here.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labkit import LabkitError
from labkit.checks import number, positive, seed_value
from labkit.tuners.generation import greedy_answers, padding_side

WEIGHT_SUFFIXES = (".safetensors", ".bin")
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


# --- comparing logits -------------------------------------------------------------------------
def sample_inputs(
    vocab_size: int | Any, batch: int = 3, seq: int = 12, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Fixed random token ids (ids 3.. to skip specials) with the last row right-padded.

    ``vocab_size`` may be a model: its ``config.vocab_size`` is used. The padded row checks that
    every path handles the attention mask the same way.
    """
    if hasattr(vocab_size, "config"):  # a model
        vocab_size = int(vocab_size.config.vocab_size)
    vocab_size = positive("vocab_size (or a model)", vocab_size)
    batch, seq = positive("batch", batch), positive("seq", seq)
    if vocab_size < 4 or seq < 2:
        raise LabkitError(
            f"need vocab_size >= 4, batch >= 1, seq >= 2; got {vocab_size}, {batch}, {seq}"
        )
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[-1, -(seq // 4 or 1) :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    """The model's logits in eval mode (dropout off) as float32 on the CPU, padding zeroed.

    Positions masked out by ``attention_mask`` are set to 0 so that comparisons only look at
    real tokens.
    """
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in inputs.items()}
    out = model(**batch, **kwargs).logits.float().cpu()
    if "attention_mask" in inputs:
        out = out * inputs["attention_mask"].unsqueeze(-1).to(out.dtype)
    return out


def _as_logits(x, inputs: dict[str, torch.Tensor] | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.float().cpu()
    if inputs is None:
        raise LabkitError("inputs are needed when comparing models; pass logits tensors or inputs")
    return logits(x, inputs)


def max_logit_diff(a, b, inputs: dict[str, torch.Tensor] | None = None) -> float:
    """Largest absolute logit difference; ``a`` and ``b`` are models or logits tensors."""
    la, lb = _as_logits(a, inputs), _as_logits(b, inputs)
    if la.shape != lb.shape:
        raise LabkitError(f"logits shapes differ: {tuple(la.shape)} vs {tuple(lb.shape)}")
    if la.numel() == 0:
        raise LabkitError(
            f"the logits are empty (shape {tuple(la.shape)}); accepted: logits with values"
        )
    return float((la - lb).abs().max())


def logits_close(a, b, inputs: dict[str, torch.Tensor] | None = None, atol: float = 1e-4) -> bool:
    """Whether two models (or logits tensors) agree within ``atol`` on every logit."""
    atol = number("atol", atol, low=0)  # NaN would call identical logits different
    return max_logit_diff(a, b, inputs) <= atol


# --- sizes on disk ----------------------------------------------------------------------------
def weights_size_on_disk(folder: str | Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``) in ``folder`` and below."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabkitError(f"{folder} is not a folder; pass a save_pretrained output folder")
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise LabkitError(f"no *.safetensors or *.bin file in {folder}; is it a saved model?")
    return sum(p.stat().st_size for p in files)


def adapter_size_on_disk(folder: str | Path) -> int:
    """Bytes of one saved adapter's weights (``adapter_model.*`` next to ``adapter_config.json``)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise LabkitError(
            f"{folder} has no adapter_config.json; pass a PeftModel.save_pretrained folder"
        )
    files = [p for p in folder.glob("adapter_model.*") if p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise LabkitError(f"{folder} has no adapter_model.safetensors or adapter_model.bin")
    return sum(p.stat().st_size for p in files)


# --- LoRA layers and the merge math -------------------------------------------------------------
def lora_layers(model) -> dict[str, Any]:
    """Every peft LoRA layer in ``model`` (LoRA, rsLoRA, DoRA, bnb and Conv1D variants), by name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def no_lora_layers_left(model) -> bool:
    """True when no peft tuner layer, ``modules_to_save`` wrapper or PeftModel shell remains."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(model, PeftModel):
        return False
    return not any(
        isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)) for m in model.modules()
    )


def _check_adapter(layer, adapter: str) -> None:
    if adapter not in layer.r:
        raise LabkitError(f"layer has no adapter {adapter!r}; it has: {', '.join(layer.r)}")


def lora_scaling(layer, adapter: str = "default") -> float:
    """``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``) from the layer's own rank and alpha."""
    _check_adapter(layer, adapter)
    r, alpha = layer.r[adapter], layer.lora_alpha[adapter]
    return alpha / math.sqrt(r) if layer.use_rslora.get(adapter, False) else alpha / r


@torch.no_grad()
def lora_delta(layer, adapter: str = "default") -> torch.Tensor:
    """``(alpha/r) · B · A`` by hand, in the base weight's layout (float32).

    ``nn.Linear`` weights are (out, in); GPT-2's ``Conv1D`` stores (in, out), so peft sets
    ``fan_in_fan_out`` and the delta is transposed; embeddings keep (num_embeddings, dim).
    """
    _check_adapter(layer, adapter)
    scale = lora_scaling(layer, adapter)
    if adapter in getattr(layer, "lora_embedding_A", {}):
        a = layer.lora_embedding_A[adapter].float()  # (r, num_embeddings)
        b = layer.lora_embedding_B[adapter].float()  # (dim, r)
        return (b @ a).T * scale
    if adapter not in layer.lora_A:
        raise LabkitError(f"adapter {adapter!r} is not a LoRA A/B pair in this layer")
    a = layer.lora_A[adapter].weight.float()
    b = layer.lora_B[adapter].weight.float()
    if a.dim() != 2:
        raise LabkitError("lora_delta covers Linear, Conv1D and Embedding layers; got a conv layer")
    delta = (b @ a) * scale
    return delta.T if getattr(layer, "fan_in_fan_out", False) else delta


def base_weight(layer) -> torch.Tensor:
    """The base layer's weight as float32 (4-bit/8-bit bitsandbytes weights are dequantized)."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer.get_base_layer()).detach().float()


@torch.no_grad()
def merge_rounding_error(
    weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> float:
    """Share of ``delta`` that a merge stored in ``dtype`` gets wrong: ``|(W + ΔW) − W − ΔW| / |ΔW|``.

    Both sides as served in ``dtype``: the merged weight is ``W.to(dtype) + ΔW.to(dtype)``,
    rounded to ``dtype`` (what peft's merge stores), the unmerged reference ``W.to(dtype)`` plus
    the exact ``ΔW``; Frobenius norms. bf16 keeps 8 significant bits, so an update much smaller
    than about 2^-8 of its weights is largely rounded away (1.0 = all of it wrong).
    """
    if weight.shape != delta.shape:
        raise LabkitError(f"weight {tuple(weight.shape)} and delta {tuple(delta.shape)} differ")
    if not dtype.is_floating_point:
        raise LabkitError(f"dtype must be a floating-point dtype, got {dtype}")
    delta = delta.float()
    size = delta.norm()
    if size == 0:
        raise LabkitError("delta is all zeros: no update to round")
    base = weight.to(dtype)
    merged = (base + delta.to(dtype)).float()
    return float((merged - base.float() - delta).norm() / size)


@torch.no_grad()
def merged_weight_by_hand(layer, adapter: str = "default") -> torch.Tensor:
    """The weight ``merge`` should produce, computed from the unmerged layer by hand.

    LoRA: ``W + (alpha/r)·B·A``. DoRA: ``m / ||W + ΔW||_row · (W + ΔW)`` with the norm taken
    per output feature (the magnitude vector ``m`` has one entry per output).
    """
    w = base_weight(layer)
    delta = lora_delta(layer, adapter)
    merged = w + delta
    magnitude = getattr(layer, "lora_magnitude_vector", {})
    if adapter in magnitude:
        fan = getattr(layer, "fan_in_fan_out", False)
        out_major = merged.T if fan else merged  # (out, in)
        norm = torch.linalg.norm(out_major, dim=1)
        scaled = (magnitude[adapter].weight.detach().float() / norm).unsqueeze(1) * out_major
        merged = scaled.T if fan else scaled
    return merged


def hand_formula(layer, adapter: str = "default") -> str:
    """The formula :func:`merged_weight_by_hand` applies to ``layer``'s ``adapter``, as text:
    ``W + (alpha/r)·B·A`` (rsLoRA: ``alpha/√r``), DoRA's ``m·(W + ΔW)/‖W + ΔW‖`` around it
    (the norm taken per output row, as peft's ``get_weight_norm``)."""
    _check_adapter(layer, adapter)
    scale = "alpha/√r" if layer.use_rslora.get(adapter, False) else "alpha/r"
    if adapter in getattr(layer, "lora_magnitude_vector", {}):
        return f"m·(W+ΔW)/‖W+ΔW‖ (norm of each output row), ΔW = ({scale})·B·A"
    return f"W + ({scale})·B·A"


def hand_merge_max_diff(peft_model, adapter: str | None = None) -> float:
    """Largest gap between peft's merged weights and :func:`merged_weight_by_hand`, all layers.

    Computes the hand result on the unmerged model, merges ``adapter`` (default: the active one),
    compares, then unmerges again, so the model is left as it was.
    """
    adapter = adapter or _single_active(peft_model)
    layers = {n: m for n, m in lora_layers(peft_model).items() if adapter in m.r}
    if not layers:
        raise LabkitError(f"no LoRA layer holds adapter {adapter!r}")
    expected = {n: merged_weight_by_hand(m, adapter) for n, m in layers.items()}
    peft_model.merge_adapter(adapter_names=[adapter])
    try:
        gaps = [
            float((m.get_base_layer().weight.detach().float() - expected[n]).abs().max())
            for n, m in layers.items()
        ]
    finally:
        peft_model.unmerge_adapter()
    return max(gaps)


def _single_active(peft_model) -> str:
    active = getattr(peft_model, "active_adapters", None)
    if not isinstance(active, list | tuple):  # a plain model: active_adapters is missing/a method
        raise LabkitError(
            f"{type(peft_model).__name__} is not a PeftModel with LoRA adapters; accepted: "
            "e.g. peft.get_peft_model(model, LoraConfig(...))"
        )
    if len(active) != 1:
        raise LabkitError(f"expected one active adapter, got {active}; name one with adapter=")
    return active[0]


# --- the merge round trip -----------------------------------------------------------------------
@dataclass
class MergeCheck:
    """Measured gaps of one merge round trip (see :func:`check_merge_round_trip`)."""

    atol: float
    adapter_vs_base: float
    merged_vs_unmerged: float
    unmerged_again_vs_unmerged: float
    weights_restored: float
    hand_vs_peft: float
    unloaded_vs_unmerged: float
    no_lora_left: bool
    unloaded_vs_base: float
    reloaded_vs_unloaded: float
    notes: list[str] = field(default_factory=list)
    #: what the hand merge computed (:func:`hand_formula`), for the summary's label
    formula: str = "W + (alpha/r)·B·A"

    def failures(self) -> list[str]:
        """One line per check that did not hold (empty when all hold)."""
        t = self.atol
        rules = [
            (
                self.adapter_vs_base > t,
                f"adapter changes the logits ({self.adapter_vs_base:.2e} > {t})",
            ),
            (
                self.merged_vs_unmerged <= t,
                f"merge_adapter keeps logits ({self.merged_vs_unmerged:.2e})",
            ),
            (
                self.unmerged_again_vs_unmerged <= t,
                f"unmerge_adapter keeps logits ({self.unmerged_again_vs_unmerged:.2e})",
            ),
            (self.weights_restored <= t, f"unmerge restores weights ({self.weights_restored:.2e})"),
            (self.hand_vs_peft <= t, f"hand-computed merge = peft's ({self.hand_vs_peft:.2e})"),
            (
                self.unloaded_vs_unmerged <= t,
                f"merge_and_unload keeps logits ({self.unloaded_vs_unmerged:.2e})",
            ),
            (self.no_lora_left, "no adapter layers remain after merge_and_unload"),
            (self.unloaded_vs_base > t, f"merged differs from base ({self.unloaded_vs_base:.2e})"),
            (
                self.reloaded_vs_unloaded <= t,
                f"saved + reloaded merged model keeps logits ({self.reloaded_vs_unloaded:.2e})",
            ),
        ]
        return [f"FAILED: {text}" for ok, text in rules if not ok]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        """A readable table of every gap, with the tolerance."""
        rows = [
            ("adapter vs base (must be > atol)", self.adapter_vs_base),
            ("merge_adapter vs unmerged", self.merged_vs_unmerged),
            ("unmerge_adapter vs unmerged", self.unmerged_again_vs_unmerged),
            ("weights after unmerge vs before", self.weights_restored),
            (f"peft merge vs {self.formula} by hand", self.hand_vs_peft),
            ("merge_and_unload vs unmerged", self.unloaded_vs_unmerged),
            ("merged vs base (must be > atol)", self.unloaded_vs_base),
            ("saved+reloaded merged vs merged", self.reloaded_vs_unloaded),
        ]
        width = max(42, *(len(name) for name, _ in rows))
        lines = [f"{name:<{width}} {value:.2e}" for name, value in rows]
        lines.append(f"{'no adapter layers left after unload':<{width}} {self.no_lora_left}")
        lines.append(f"atol {self.atol:g}: {'all checks hold' if self.ok else 'SOME CHECKS FAIL'}")
        return "\n".join(lines + self.notes)

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` listing every failed check."""
        assert self.ok, "\n".join(self.failures())


def _base_state(peft_model) -> dict[str, torch.Tensor]:
    return {n: base_weight(m).clone() for n, m in lora_layers(peft_model).items()}


def check_merge_round_trip(
    peft_model,
    inputs: dict[str, torch.Tensor] | None = None,
    atol: float = 1e-4,
    folder: str | Path | None = None,
):
    """Run peft's merge checks on a LoRA ``PeftModel`` and return ``(MergeCheck, merged_model)``.

    Order: base logits (``disable_adapter``), unmerged logits, ``merge_adapter`` →
    ``unmerge_adapter`` (logits and base weights restored), peft's merged weights vs the hand
    formula, ``merge_and_unload`` (logits kept, no adapter layer left, differs from base), then
    ``save_pretrained`` of the merged model and a plain ``AutoModelForCausalLM`` reload.
    ``merge_and_unload`` works in place: ``peft_model`` is consumed. ``folder`` defaults to a
    temporary folder.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not isinstance(peft_model, PeftModel) or not lora_layers(peft_model):
        raise LabkitError("check_merge_round_trip needs a PeftModel with LoRA layers")
    inputs = inputs if inputs is not None else sample_inputs(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model, inputs)
    unmerged = logits(peft_model, inputs)
    before = _base_state(peft_model)
    peft_model.merge_adapter()
    merged = logits(peft_model, inputs)
    peft_model.unmerge_adapter()
    again = logits(peft_model, inputs)
    after = _base_state(peft_model)
    restored = max(float((before[n] - after[n]).abs().max()) for n in before)
    active = peft_model.active_adapters
    notes = []
    formula = MergeCheck.formula  # the plain merge unless one active adapter says otherwise
    if len(active) == 1:
        hand = hand_merge_max_diff(peft_model, active[0])
        holder = next(m for m in lora_layers(peft_model).values() if active[0] in m.r)
        formula = hand_formula(holder, active[0])
    else:  # pragma: no cover - several active adapters: the hand formula is per adapter
        hand, notes = 0.0, [f"hand check skipped: {len(active)} active adapters"]
    unloaded = peft_model.merge_and_unload()
    after_unload = logits(unloaded, inputs)
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="labkit-merged-")
        folder = tmp.name
    try:
        unloaded.save_pretrained(folder)
        dtype = next(unloaded.parameters()).dtype
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        reloaded_logits = logits(reloaded, inputs)
    finally:
        if tmp is not None:
            tmp.cleanup()
    check = MergeCheck(
        atol=atol,
        adapter_vs_base=max_logit_diff(unmerged, base),
        merged_vs_unmerged=max_logit_diff(merged, unmerged),
        unmerged_again_vs_unmerged=max_logit_diff(again, unmerged),
        weights_restored=restored,
        hand_vs_peft=hand,
        unloaded_vs_unmerged=max_logit_diff(after_unload, unmerged),
        no_lora_left=no_lora_layers_left(unloaded),
        unloaded_vs_base=max_logit_diff(after_unload, base),
        reloaded_vs_unloaded=max_logit_diff(reloaded_logits, after_unload),
        notes=notes,
        formula=formula,
    )
    return check, unloaded


def check_adapter_round_trip(
    peft_model,
    load_base: Callable[[], Any],
    folder: str | Path,
    inputs: dict[str, torch.Tensor] | None = None,
) -> float:
    """Save ``peft_model``'s active adapter, reload it on a fresh base, return the max logit gap.

    ``load_base`` must return a pristine base model: ``get_peft_model`` changed the old one in
    place.
    """
    from peft import PeftModel

    adapter = _single_active(peft_model)
    inputs = inputs if inputs is not None else sample_inputs(peft_model)
    expected = logits(peft_model, inputs)
    peft_model.save_pretrained(str(folder), selected_adapters=[adapter])
    sub = Path(folder) if adapter == "default" else Path(folder) / adapter
    reloaded = PeftModel.from_pretrained(load_base(), str(sub), adapter_name=adapter)
    return max_logit_diff(logits(reloaded, inputs), expected)


def randomize_lora(peft_model, adapter: str | None = None, std: float = 0.05, seed: int = 0) -> int:
    """Give every LoRA B (and DoRA magnitude) of ``adapter`` random values; return how many.

    peft initialises B to zero so a fresh adapter is a no-op; merge tests need a real delta.
    """
    std = number("std", std, above=0)  # 0 (or NaN) leaves the adapter a no-op (or NaN)
    seed = seed_value("seed", seed)
    adapter = adapter or _single_active(peft_model)
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for layer in lora_layers(peft_model).values():
            if adapter not in layer.r:
                continue
            b = layer.lora_B[adapter].weight if adapter in layer.lora_B else None
            if b is None:
                b = layer.lora_embedding_B[adapter]
            b.copy_(torch.randn(b.shape, generator=gen) * std)
            if adapter in getattr(layer, "lora_magnitude_vector", {}):
                m = layer.lora_magnitude_vector[adapter].weight
                m.mul_(1 + 0.1 * torch.randn(m.shape, generator=gen))
            count += 1
    if not count:
        raise LabkitError(f"no LoRA layer holds adapter {adapter!r}")
    return count


# --- several adapters in one batch ---------------------------------------------------------------
def mixed_batch_logits(
    peft_model, inputs: dict[str, torch.Tensor], adapter_names: Sequence[str]
) -> torch.Tensor:
    """One forward pass where row i uses ``adapter_names[i]`` (``"__base__"`` = no adapter)."""
    n = inputs["input_ids"].shape[0]
    if len(adapter_names) != n:
        raise LabkitError(f"need one adapter name per row: {n} rows, {len(adapter_names)} names")
    known = set(peft_model.peft_config) | {BASE}
    unknown = sorted(set(adapter_names) - known)
    if unknown:
        raise LabkitError(f"unknown adapter(s) {unknown}; loaded: {', '.join(sorted(known))}")
    return logits(peft_model, inputs, adapter_names=list(adapter_names))


def per_adapter_logits(
    peft_model, inputs: dict[str, torch.Tensor], adapter_names: Sequence[str]
) -> torch.Tensor:
    """The reference for :func:`mixed_batch_logits`: each row run with its adapter set alone.
    The active adapter and every parameter's ``requires_grad`` are as before afterwards
    (``set_adapter`` alone would make each adapter it switches to trainable)."""
    previous = list(peft_model.active_adapters)
    trainable = {name: p.requires_grad for name, p in peft_model.named_parameters()}
    rows = []
    try:
        for i, name in enumerate(adapter_names):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            if name == BASE:
                with peft_model.disable_adapter():
                    rows.append(logits(peft_model, row))
            else:
                peft_model.set_adapter(name)
                rows.append(logits(peft_model, row))
    finally:
        peft_model.set_adapter(previous[0] if len(previous) == 1 else previous)
        for name, p in peft_model.named_parameters():
            p.requires_grad_(trainable[name])
    return torch.cat(rows)


@torch.no_grad()
def generate_mixed(
    peft_model,
    tokenizer,
    prompts: list[str],
    adapter_names: Sequence[str],
    max_new_tokens: int = 14,
) -> list[str]:
    """Greedy answers for a left-padded batch whose rows use different adapters, cut at newline.

    ``max_new_tokens`` defaults to 14, as in ``finetune.generate_answers``, so that a row's answer
    can be compared with the same adapter's answer generated alone.
    """
    if len(prompts) != len(adapter_names):
        raise LabkitError(f"need one adapter per prompt: {len(prompts)} vs {len(adapter_names)}")
    with padding_side(tokenizer, "left"):
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return greedy_answers(
        peft_model,
        tokenizer,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens,
        adapter_names=list(adapter_names),
    )


# --- combining adapters --------------------------------------------------------------------------
def combine(
    peft_model,
    adapters: Sequence[str],
    weights: Sequence[float],
    combination_type: str,
    name: str | None = None,
    **kwargs: Any,
) -> str:
    """``add_weighted_adapter`` under a readable name, made active (frozen); returns the name.

    ``kwargs`` go to peft (``density=`` for ties/dare, ``majority_sign_method=``...).
    """
    if len(adapters) != len(weights) or not adapters:
        raise LabkitError(f"need one weight per adapter: {list(adapters)} vs {list(weights)}")
    name = name or f"{combination_type}({'+'.join(adapters)})"
    if name in peft_model.peft_config:
        if name in peft_model.active_adapters:  # deleting the active one warns once per layer
            peft_model.set_adapter(adapters[0], inference_mode=True)
        peft_model.delete_adapter(name)
    peft_model.add_weighted_adapter(
        list(adapters),
        list(weights),
        adapter_name=name,
        combination_type=combination_type,
        **kwargs,
    )
    peft_model.set_adapter(name, inference_mode=True)  # frozen, like a loaded adapter
    return name


def error_line(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Call ``fn`` expecting it to fail; return ``"ErrorType: first line of the message"``.

    Raises ``LabkitError`` if the call succeeds, so a notebook cannot show an error that is not there.
    """
    try:
        fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - we report whatever the library raises
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else ''}"
    raise LabkitError(f"{getattr(fn, '__name__', fn)} did not raise; expected an error")
