"""Inference speed from first principles: bytes read per token, FLOPs, and a card's roofline.

Generating one token (decode) runs every weight matrix once on a handful of vectors, so each step
reads all the weights (and each sequence's KV cache) from memory and does only ~2 FLOPs per weight
per sequence. Its time is the larger of ``bytes / bandwidth`` and ``FLOPs / peak FLOP/s`` (the
roofline model, Williams et al. 2009): at batch 1 the bytes win by a factor of hundreds on a GPU,
so single-stream tokens/s is bounded by ``bandwidth / bytes per token``. Prefill (the prompt, many
tokens per weight read) is compute-bound instead.

:data:`CARDS` holds vendor figures (memory, type, bandwidth, dense BF16 tensor TFLOPS) with the
URL each comes from; :func:`decode_cost` turns a model config into bytes and FLOPs per decode step;
the ``*_tokens_per_s`` functions predict speed; :func:`machine` turns figures measured on the
machine you are on (:mod:`labkit.inference.bench`) into a :class:`Card` for the same predictors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from labkit import LabkitError, dtypes, unknown
from labkit.memory import estimator
from labkit.models import architecture

GB = 1e9  # vendors quote bandwidth in GB/s and TB/s with decimal prefixes
TERA = 1e12


@dataclass(frozen=True)
class Card:
    """One accelerator as its vendor specifies it (decimal units, as datasheets quote them)."""

    name: str
    memory_gb: float  # GB of device memory
    memory_type: str  # GDDR6, GDDR6X, HBM2e, HBM3, HBM3e...
    bandwidth_gb_s: float  # peak memory bandwidth, GB/s
    bf16_tflops: float  # dense BF16 tensor throughput (not the 2:4-sparsity figure), TFLOP/s
    source: str  # where the figures come from (vendor datasheet or whitepaper)
    note: str = ""

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gb_s * GB

    @property
    def flops(self) -> float:
        """FLOP per second (dense BF16)."""
        return self.bf16_tflops * TERA

    @property
    def ridge(self) -> float:
        """Ridge point, FLOP per byte: below it a kernel is memory-bound, above it compute-bound."""
        return self.flops / self.bandwidth

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * GB


_DENSE = "dense = half the vendor's 'with sparsity' figure"
#: Vendor figures. Dense BF16 with FP32 accumulation; where a datasheet quotes only the 2:4
#: structured-sparsity number (marked *), the dense figure is half of it, as its footnote says.
CARDS: dict[str, Card] = {
    c.name.lower().replace(" ", "-"): c
    for c in (
        Card(
            name="RTX 3090",
            memory_gb=24,
            memory_type="GDDR6X",
            bandwidth_gb_s=936,
            bf16_tflops=71,
            source="https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf",
            note="GA102 whitepaper, appendix A: peak BF16 tensor TFLOPS with FP32 accumulate 71/142",
        ),
        Card(
            name="RTX 4090",
            memory_gb=24,
            memory_type="GDDR6X",
            bandwidth_gb_s=1008,
            bf16_tflops=165.2,
            source="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
            note="Ada whitepaper, appendix: peak BF16 tensor TFLOPS with FP32 accumulate 165.2/330.4",
        ),
        Card(
            name="L40S",
            memory_gb=48,
            memory_type="GDDR6",
            bandwidth_gb_s=864,
            bf16_tflops=362.05,
            source="https://www.nvidia.com/en-us/data-center/l40s/",
            note="BFLOAT16 tensor core 362.05 | 733* TFLOPS (*with sparsity)",
        ),
        Card(
            name="A100 80GB SXM",
            memory_gb=80,
            memory_type="HBM2e",
            bandwidth_gb_s=2039,
            bf16_tflops=312,
            source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
            note="BFLOAT16 tensor core 312 | 624* TFLOPS",
        ),
        Card(
            name="H100 SXM",
            memory_gb=80,
            memory_type="HBM3",
            bandwidth_gb_s=3350,
            bf16_tflops=989.5,
            source="https://www.nvidia.com/en-us/data-center/h100/",
            note=f"BFLOAT16 tensor core 1,979* TFLOPS; {_DENSE}",
        ),
        Card(
            name="H200 SXM",
            memory_gb=141,
            memory_type="HBM3e",
            bandwidth_gb_s=4800,
            bf16_tflops=989.5,
            source="https://www.nvidia.com/en-us/data-center/h200/",
            note=f"BFLOAT16 tensor core 1,979* TFLOPS; {_DENSE}",
        ),
        Card(
            name="MI300X",
            memory_gb=192,
            memory_type="HBM3",
            bandwidth_gb_s=5300,
            bf16_tflops=1307.4,
            source="https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html",
            note="peak BF16 1,307.4 TFLOPS (2,614.9 with structured sparsity)",
        ),
    )
}


def card(name: str | Card) -> Card:
    """A card from :data:`CARDS` by key (``h100-sxm``) or name (``H100 SXM``), case-insensitive."""
    if isinstance(name, Card):
        return name
    key = str(name).strip().lower().replace(" ", "-").replace("_", "-")
    if key not in CARDS:
        raise unknown("card", name, CARDS)
    return CARDS[key]


# ----------------------------------------------------------------------------- model costs
#: Embedding tables a forward pass only looks rows up in (it does not read the whole table).
_LOOKUP_TABLES = {
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.word_embeddings.weight",
}


@dataclass(frozen=True)
class DecodeCost:
    """What one decode step costs a model, before choosing a batch size or context length.

    ``weight_bytes``: weights read once per step and shared by the whole batch (every matrix, the
    output head included; embedding tables are only looked up, one row per sequence, so they are
    left out unless tied to the head). ``kv_bytes_per_token``: KV cache per sequence per position,
    read each step. ``flops_per_token``: 2 FLOPs per weight of every matrix product, per sequence.
    ``attn_flops_per_position``: QK^T and attention-times-V, 4·layers·heads·head_dim per position
    of context, per sequence. ``resident_bytes``: all weights as stored (what must fit).
    ``head_flops_per_token``: the output head's share of ``flops_per_token`` (2·hidden·vocab):
    a prefill pays it only for the positions whose logits it keeps (see :func:`prefill_flops`).
    """

    weight_bytes: float
    kv_bytes_per_token: float
    flops_per_token: float
    attn_flops_per_position: float
    resident_bytes: float
    layers: int
    head_flops_per_token: float = 0.0
    dtype: str = "bf16"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_cost(config: Any, dtype: str = "bf16", kv_dtype: str | None = None) -> DecodeCost:
    """:class:`DecodeCost` of a model config (a transformers config, dict or catalog name).

    ``dtype`` is the weight format (fp32, bf16, fp16, int8, nf4: int8/nf4 quantize the block
    linears only, as bitsandbytes does, see :func:`labkit.memory.estimator.weight_bytes`); the KV cache is
    kept in ``kv_dtype`` (default: the compute dtype, bf16 for int8/nf4).
    """
    if isinstance(config, str):
        from labkit.models import zoo

        config = zoo.load_config(config)
    s = architecture.shape_of(config)
    resident = estimator.weight_bytes(s, dtype)
    table_dtype = "bf16" if dtype in {"int8", "nf4"} else dtype
    shapes = architecture.param_shapes(s)
    token_tables = {n for n in _LOOKUP_TABLES if n != "transformer.wpe.weight"}
    # a tied token table is also the output head, which reads all of it: not skipped
    lookup = [n for n in shapes if n in _LOOKUP_TABLES and not (s.tied and n in token_tables)]
    skipped = sum(math.prod(shapes[n]) for n in lookup) * dtypes.DTYPE_BYTES[table_dtype]
    matmul = sum(math.prod(shp) for n, shp in shapes.items() if len(shp) == 2)
    matmul -= sum(math.prod(shp) for n, shp in shapes.items() if n in _LOOKUP_TABLES)
    matmul += s.vocab * s.hidden if s.tied else 0  # an untied lm_head is already counted
    kv_dtype = kv_dtype or ("bf16" if dtype in {"int8", "nf4"} else dtype)
    return DecodeCost(
        weight_bytes=float(resident - skipped),
        kv_bytes_per_token=float(estimator.kv_cache_bytes(s, 1, 1, kv_dtype)),
        flops_per_token=2.0 * matmul,
        attn_flops_per_position=4.0 * s.layers * s.heads * s.head_dim,
        resident_bytes=float(resident),
        layers=s.layers,
        head_flops_per_token=2.0 * s.vocab * s.hidden,
        dtype=dtype,
    )


def _check_sizes(batch: int, context: int) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise LabkitError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(context, int) or context < 0:
        raise LabkitError(f"context must be an integer >= 0, got {context!r}")


def step_bytes(cost: DecodeCost, *, batch: int = 1, context: int = 0) -> float:
    """Bytes one decode step reads: the weights once, plus each sequence's KV cache."""
    _check_sizes(batch, context)
    return cost.weight_bytes + batch * context * cost.kv_bytes_per_token


def step_flops(cost: DecodeCost, *, batch: int = 1, context: int = 0) -> float:
    """FLOPs of one decode step: ``batch`` tokens through every matrix, plus attention."""
    _check_sizes(batch, context)
    return batch * (cost.flops_per_token + context * cost.attn_flops_per_position)


def arithmetic_intensity(cost: DecodeCost, *, batch: int = 1, context: int = 0) -> float:
    """FLOPs per byte read of one decode step (compare with :attr:`Card.ridge`)."""
    return step_flops(cost, batch=batch, context=context) / step_bytes(
        cost, batch=batch, context=context
    )


def step_seconds(cost: DecodeCost, hw: Card | str, *, batch: int = 1, context: int = 0) -> float:
    """Roofline time of one decode step: the larger of memory time and compute time."""
    hw = card(hw)
    return max(
        step_bytes(cost, batch=batch, context=context) / hw.bandwidth,
        step_flops(cost, batch=batch, context=context) / hw.flops,
    )


def decode_tokens_per_s(
    cost: DecodeCost, hw: Card | str, *, batch: int = 1, context: int = 0
) -> float:
    """Predicted decode throughput, tokens/s summed over the batch (per sequence: divide by it).

    An upper bound: real kernels reach only part of the peak bandwidth (the course assumes
    60-90% on GPUs, a rule of thumb it does not measure), and time spent outside the matrix
    products (launches, sampling, Python) comes on top.
    """
    return batch / step_seconds(cost, hw, batch=batch, context=context)


def regime(cost: DecodeCost, hw: Card | str, *, batch: int = 1, context: int = 0) -> str:
    """``"memory-bound"`` or ``"compute-bound"``: which side of the ridge a decode step is on."""
    hw = card(hw)
    ai = arithmetic_intensity(cost, batch=batch, context=context)
    return "memory-bound" if ai < hw.ridge else "compute-bound"


def max_batch(cost: DecodeCost, hw: Card | str, *, context: int) -> int:
    """Largest batch whose weights plus KV cache for ``context`` tokens fit in the card's memory
    (0 if the weights alone do not fit; activations and allocator overhead are not counted)."""
    hw = card(hw)
    _check_sizes(1, context)
    free = hw.memory_bytes - cost.resident_bytes
    if free <= 0:
        return 0
    per_seq = max(context, 1) * cost.kv_bytes_per_token
    return int(free // per_seq)


def prefill_flops(
    cost: DecodeCost, *, prompt: int, batch: int = 1, logits_to_keep: int = 1
) -> float:
    """FLOPs of a prefill of ``prompt`` tokens: every matrix but the output head for each token,
    causal attention, and the head for the last ``logits_to_keep`` positions only.

    ``logits_to_keep`` follows transformers: ``generate()`` passes 1 (only the next token's logits
    are needed), a plain ``model(ids)`` call keeps all of them (0 = every position).
    """
    _check_sizes(batch, prompt)
    if prompt < 1:
        raise LabkitError(f"prompt must be >= 1 token, got {prompt}")
    if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise LabkitError(
            f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}"
        )
    kept = prompt if logits_to_keep == 0 else min(logits_to_keep, prompt)
    body = cost.flops_per_token - cost.head_flops_per_token
    attn = prompt * (prompt + 1) / 2 * cost.attn_flops_per_position
    return batch * (prompt * body + kept * cost.head_flops_per_token + attn)


def prefill_bytes(cost: DecodeCost, *, prompt: int, batch: int = 1) -> float:
    """Bytes a prefill moves: the weights read once for all its tokens, the KV cache written once."""
    _check_sizes(batch, prompt)
    return cost.weight_bytes + batch * prompt * cost.kv_bytes_per_token


def prefill_tokens_per_s(
    cost: DecodeCost, hw: Card | str, *, prompt: int, batch: int = 1, logits_to_keep: int = 1
) -> float:
    """Predicted prompt-processing speed, tokens/s: all ``prompt`` tokens share one weight read,
    so for a long prompt the FLOPs (:func:`prefill_flops`) dominate (compute-bound); a prompt
    shorter than about the card's ridge in FLOP/B (in bf16) stays memory-bound: the larger of
    the two times counts. ``logits_to_keep=1`` is what ``generate()`` runs (the time to first
    token); 0 counts the head for every position."""
    hw = card(hw)
    flops = prefill_flops(cost, prompt=prompt, batch=batch, logits_to_keep=logits_to_keep)
    nbytes = prefill_bytes(cost, prompt=prompt, batch=batch)
    return batch * prompt / max(nbytes / hw.bandwidth, flops / hw.flops)


def split_tokens_per_s(
    cost: DecodeCost,
    hw: Card | str,
    *,
    n_cards: int,
    mode: str = "pipeline",
    batch: int = 1,
    context: int = 0,
    allreduce_s: float = 0.0,
) -> float:
    """Decode throughput with the model split over ``n_cards`` identical cards.

    ``pipeline`` (what ``device_map="auto"`` does): each card holds a contiguous block of layers
    and the blocks run one after another, so a step still reads all the weights at one card's
    bandwidth: the same speed as one card (here without the hop between cards). ``tensor``: each
    card holds a 1/n shard of every matrix and all read at once, so bandwidth and FLOP/s add;
    each layer then pays two all-reduces of ``allreduce_s`` seconds each (a parameter of your
    interconnect, latency-dominated for the small decode activations).
    """
    if mode not in ("pipeline", "tensor"):
        raise unknown("split mode", mode, ("pipeline", "tensor"))
    if not isinstance(n_cards, int) or n_cards < 1:
        raise LabkitError(f"n_cards must be a positive integer, got {n_cards!r}")
    if allreduce_s < 0:
        raise LabkitError(f"allreduce_s must be >= 0 seconds, got {allreduce_s}")
    t = step_seconds(cost, hw, batch=batch, context=context)
    if mode == "tensor":
        t = t / n_cards + (2 * cost.layers * allreduce_s if n_cards > 1 else 0.0)
    return batch / t


def predict(
    config: Any,
    hw: Card | str,
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 2048,
) -> dict[str, Any]:
    """Everything ``estimate --mode infer --card NAME`` reports, as one dict.

    ``decode_tokens_per_s`` is summed over the batch; ``bound`` says which roof limits it;
    ``fits`` whether weights plus KV cache fit in the card's memory.
    """
    hw = card(hw)
    cost = decode_cost(config, dtype)
    tps = decode_tokens_per_s(cost, hw, batch=batch, context=context)
    return {
        "card": hw.name,
        "decode_tokens_per_s": tps,
        "per_sequence_tokens_per_s": tps / batch,
        "bound": regime(cost, hw, batch=batch, context=context),
        "arithmetic_intensity": arithmetic_intensity(cost, batch=batch, context=context),
        "ridge": hw.ridge,
        "fits": max_batch(cost, hw, context=context) >= batch,
    }


def prediction_line(p: dict[str, Any], *, batch: int, context: int) -> str:
    """One readable line for :func:`predict`'s dict (used by the CLI table)."""
    line = (
        f"{p['decode_tokens_per_s']:,.0f} tokens/s on {p['card']} (batch {batch}, context "
        f"{context}; {p['bound']}: {p['arithmetic_intensity']:.1f} FLOP/B vs ridge {p['ridge']:.0f})"
    )
    return line if p["fits"] else line + "; does NOT fit in its memory"


def machine(bandwidth: float, flops: float, name: str = "this machine") -> Card:
    """A :class:`Card` for measured figures (bytes/s and FLOP/s), to reuse the predictors."""
    if bandwidth <= 0 or flops <= 0:
        raise LabkitError(f"bandwidth and flops must be > 0, got {bandwidth} and {flops}")
    return Card(
        name=name,
        memory_gb=0,
        memory_type="measured",
        bandwidth_gb_s=bandwidth / GB,
        bf16_tflops=flops / TERA,
        source="measured here",
    )
