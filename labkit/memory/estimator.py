"""Memory and training-time estimates from a model config alone (no weights are loaded): the
totals notebook 01 teaches (training and inference memory, sharding over GPUs, time, rules of
thumb). What the model looks like comes from :mod:`labkit.models.architecture`, what autograd keeps for
backward from :mod:`labkit.memory.activations`, dtype sizes from :mod:`labkit.dtypes`.

Everything here is a pure function of a config (a ``transformers`` config, a dict, or a name that
:func:`labkit.models.zoo.load_config` resolves) plus sizes. The figures are in bytes and are meant to be
*checked*, not trusted: :mod:`labkit.memory.measure` measures the same quantities on real models.

What is exact and what is a model of reality:

- parameter counts, and the bytes of weights, gradients and optimizer state (AdamW, SGD with
  momentum, Adafactor, bitsandbytes 8-bit AdamW) are exact: they equal the bytes of the real tensors
  after a real step on CPU (tests/test_measure.py);
- ``activations + logits`` is exactly what autograd saves for backward (the saved-tensor
  measurement in :mod:`labkit.memory.measure`), derived op by op from the transformers 5.24 modeling code of
  each family (:mod:`labkit.memory.activations`): exact for full fine-tuning of all five
  families in fp32 and pure bf16, eager and SDPA, checkpointing on and off, and under bf16 autocast
  (mixed precision) for Llama, Mistral and Qwen2, whose 16-bit weight copies equal the working
  copy counted with the weights (:func:`autocast_cast_parameters`). LoRA is derived the same way
  for all five families (:func:`labkit.memory.activations.lora_activation_bytes`: a frozen op keeps
  only what a gradient still needs) and is exact for any targets in fp32 and pure bf16, eager
  and SDPA, checkpointing on and off, and on a bf16 base under bf16 autocast (Llama, Qwen2,
  SDPA);
- ``transient`` (logits held by the model output and the loss gradient during backward) and the
  CUDA allocator are only checked on a GPU (scripts/gpu_validate_memory.py).

It is one module of about 650 lines because it holds every total a learner reads in notebook 01
(training, inference, sharding, time, rules of thumb); the counting lives in architecture and
activations.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.dtypes import DTYPE_BYTES, quantized_bytes
from labkit.memory.activations import (
    ADAPTER_DTYPES,
    activation_bytes,
    lora_activation_bytes,
    sequence_length,
)
from labkit.models.architecture import (
    FORMULA_FAMILIES,
    TRAINING_METHODS,
    Shape,
    _config_dict,
    count_parameters,
    module_table,
    param_shapes,
    shape_of,
    transformers_config,
)
from labkit.models.targets import block_linears, trainable_shapes

#: Precision regimes of training: ``fp32``; ``bf16-mixed``/``fp16-mixed`` (autocast with fp32
#: master weights); ``bf16`` (pure: everything in bf16).
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
#: Optimizers whose state the estimator sizes (and :func:`labkit.memory.measure.make_optimizer` builds).
OPTIMIZERS = ("adamw", "sgd", "adafactor", "adamw8bit")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
#: bitsandbytes 8-bit optimizers keep 32-bit state for tensors smaller than this (``min_8bit_size``).
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256


# ----------------------------------------------------------------------------- weights
def nf4_bytes(numel: int, double_quant: bool = True, blocksize: int = 64) -> float:
    """Bytes of one NF4-quantized weight: 4-bit codes + absmax constants
    (:func:`labkit.dtypes.quantized_bytes`; with double quantization 4.127 bits per weight)."""
    return quantized_bytes(numel, 4, blocksize, double_quant=double_quant)


def weight_bytes(config: Any, dtype: str = "bf16", double_quant: bool = True) -> int:
    """Bytes of all weights in ``dtype``; int8/nf4 quantize the block linears only.

    Embeddings, norms and the output head stay 16-bit under int8/nf4, as bitsandbytes does.
    int8 (LLM.int8) adds one fp32 scale per output row; nf4 adds its quant-state (absmax).
    """
    choice("weight dtype", dtype, WEIGHT_DTYPES)
    s = shape_of(config) if is_formula_family(config) else config
    quantized = {f"{m.name}.weight": m.d_out for m in block_linears(s)}
    total = 0.0
    for name, shp in param_shapes(s).items():
        n = math.prod(shp)
        if dtype == "int8" and name in quantized:
            total += n + 4 * quantized[name]
        elif dtype == "nf4" and name in quantized:
            total += nf4_bytes(n, double_quant)
        else:  # unquantized tensors: the dtype itself, or 16-bit beside int8/nf4 linears
            total += n * (2 if dtype in {"int8", "nf4"} else DTYPE_BYTES[dtype])
    return int(math.ceil(total))


# ----------------------------------------------------------------------------- families
def is_formula_family(config: Any) -> bool:
    """True for a :class:`Shape` or a config of the five formula families (their activations are
    derived in :mod:`labkit.memory.activations`); any other causal LM goes through :mod:`labkit.memory.dryrun`."""
    return isinstance(config, Shape) or _config_dict(config).get("model_type") in FORMULA_FAMILIES


def layers_and_vocab(config: Any) -> tuple[int, int]:
    """(decoder layers, output vocabulary) of any causal LM config (the head's out features)."""
    if is_formula_family(config):
        s = shape_of(config)
        return s.layers, s.vocab
    text = transformers_config(config).get_text_config()
    heads = [m for m in module_table(config) if m.name.endswith("lm_head")]
    vocab = heads[0].d_out if heads else text.vocab_size
    return int(text.num_hidden_layers), int(vocab)


# ----------------------------------------------------------------------------- training
@dataclass
class Breakdown:
    """A memory breakdown in bytes (counts where named), as the ``estimate`` command prints it."""

    parameters: int
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    kv_cache: int
    transient: int
    total: int
    gpus_needed: int = 1
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def autocast_cast_parameters(
    config: Any, trainable: Mapping[str, tuple[int, ...]], checkpointing: bool = False
) -> int:
    """Parameters whose 16-bit autocast copies are kept for backward at once: the linear weights
    of ``trainable`` and the output head (a tied head is the embedding matrix). Embedding
    lookups and norms run on the fp32 weights; equals the measured ``Saved.param_copies``.
    ``checkpointing``: copies that autocast does not cache (frozen weights) live only while their
    block is recomputed: the head plus the largest block.
    """
    s = shape_of(config)
    head = s.vocab * s.hidden if s.tied else math.prod(trainable.get("lm_head.weight", (0,)))
    linear = {f"{m.name}.weight" for m in block_linears(s)}
    per_block: dict[str, int] = {}
    for name, shp in trainable.items():
        if name in linear:
            block = re.search(r"\.(h|layers)\.(\d+)\.", name)
            key = block.group(2) if block else name
            per_block[key] = per_block.get(key, 0) + math.prod(shp)
    blocks = max(per_block.values(), default=0) if checkpointing else sum(per_block.values())
    return head + blocks


def optimizer_bytes(
    shapes: Mapping[str, tuple[int, ...]], optimizer: str, state_bytes: int = 4
) -> int:
    """Bytes of optimizer state for trainable tensors of these shapes (exact for the torch / bnb /
    transformers implementations on CPU).

    - ``adamw`` (torch): m and v in the parameter dtype, plus a 4-byte ``step`` tensor per tensor;
    - ``sgd`` (torch, momentum > 0): one momentum buffer;
    - ``adafactor`` (transformers): row and column second moments for matrices, full for vectors,
      plus a 4-byte RMS scalar tensor per tensor;
    - ``adamw8bit`` (bitsandbytes): uint8 m and v with an fp32 absmax per 256 values; tensors
      under 4096 values keep fp32 m and v; plus the two shared 256-entry fp32 quantile maps.
    """
    choice("optimizer", optimizer, OPTIMIZERS)
    total = 0
    for shp in shapes.values():
        n = math.prod(shp)
        if optimizer == "adamw":
            total += 2 * n * state_bytes + 4
        elif optimizer == "sgd":
            total += n * state_bytes
        elif optimizer == "adafactor":
            total += state_bytes * ((math.prod(shp[:-1]) + shp[-1]) if len(shp) >= 2 else n) + 4
        else:
            if n >= BNB_MIN_8BIT_SIZE:
                total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK)
            else:
                total += 2 * 4 * n
    if optimizer == "adamw8bit" and shapes:
        total += 2 * 256 * 4
    return total


def optimizer_unsharded_bytes(shapes: Mapping[str, tuple[int, ...]], optimizer: str) -> int:
    """The part of :func:`optimizer_bytes` that ZeRO / FSDP do not shard: AdamW's and Adafactor's
    4-byte step/RMS scalar per tensor (each rank keeps its own), and 8-bit AdamW's two quantile
    maps. Measured on 2 ranks in notebook 03: sharded state = replicated state / 2 + these bytes."""
    if optimizer in {"adamw", "adafactor"}:
        return 4 * len(shapes)
    if optimizer == "adamw8bit" and shapes:
        return 2 * 256 * 4
    return 0


def training_memory(
    config: Any,
    *,
    method: str = "full",
    precision: str = "bf16-mixed",
    optimizer: str = "adamw",
    batch: int = 1,
    seq: int = 512,
    grad_accum: int = 1,
    checkpointing: bool = False,
    attention: str = "sdpa",
    lora_r: int = 8,
    lora_targets: Any = "default",
    frozen_layers: int = 0,
    adapter_dtype: str = "fp32",
    base_dtype: str | None = None,
    dropout: bool = True,
    device: str = "cuda",
) -> Breakdown:
    """Training memory of one GPU (no sharding) in bytes: weights, gradients, optimizer state,
    activations, logits (loss buffer), transient, total.

    Precision: ``fp32``; ``bf16-mixed``/``fp16-mixed`` = fp32 master weights + the 16-bit copies
    autocast makes of the weights it casts (:func:`autocast_cast_parameters`: the linears and the
    head, not embeddings or norms), fp32 gradients (4) and fp32 optimizer state, activations under
    autocast: just under the 18 B/param of HF's "model training anatomy", which assumes every
    weight is copied; ``bf16`` = everything in bf16 (pure). ``grad_accum``
    does not change memory (it is reported in the details: the same micro-batch runs N times).
    QLoRA: NF4 base with double quant, LoRA adapters in ``adapter_dtype`` (peft 0.21 upcasts them
    to fp32 by default; ``bf16`` as in the QLoRA paper). ``transient``: the logits the model
    output keeps (b·s·V, activation dtype) plus the fp32 loss gradient at the start of backward.
    ``base_dtype`` (LoRA only): the frozen base's dtype. ``None`` keeps the base in fp32 under
    ``fp32`` and autocast and in bf16 under pure ``bf16``; practice loads it in 16 bit
    (``"bf16"``: no fp32 copy, no autocast copies of it; under autocast the fp32 adapters get
    cached 16-bit copies and compute in 16 bit, exact on CPU for Llama and Qwen2 with SDPA).
    ``details["regime"]`` names the regime in words (:func:`regime`).

    The five formula families (:func:`is_formula_family`) take their activations from the
    derivation in :mod:`labkit.memory.activations`; any other causal LM transformers can build from a dry
    run (:func:`labkit.memory.dryrun.training_activations`: one fake CPU step, measured as
    :mod:`labkit.memory.measure` measures a real one), whose autocast weight copies are measured too
    (with a frozen fp32 LoRA base under autocast, the frozen weights' 16-bit copies are in the
    dry run's activations). ``details["activations_from"]`` says which: ``formula`` or
    ``dry-run``.
    """
    formula = is_formula_family(config)
    s = shape_of(config) if formula else config
    batch = positive("batch", batch)
    seq = sequence_length(s, seq) if formula else positive("sequence length", seq)
    n_layers, vocab = layers_and_vocab(s)
    choice("method", method, TRAINING_METHODS)
    choice("precision", precision, PRECISIONS)
    choice("optimizer", optimizer, OPTIMIZERS)
    positive("gradient accumulation steps", grad_accum)
    if method == "qlora" and precision == "fp32":
        raise LabkitError(
            "QLoRA computes in 16-bit; use --precision bf16-mixed, fp16-mixed or bf16"
        )
    if method != "frozen" and frozen_layers:
        raise LabkitError("--frozen-layers needs --method frozen")
    if not 0 <= frozen_layers <= n_layers:
        raise LabkitError(f"frozen layers must be between 0 and {n_layers}, got {frozen_layers}")
    if method in {"lora", "qlora"}:
        positive("LoRA rank r", lora_r)
    if base_dtype is not None:
        if method != "lora":
            raise LabkitError("a base dtype applies to --method lora (QLoRA's base is NF4)")
        choice("base dtype", base_dtype, ADAPTER_DTYPES)
        if precision == "fp32" and base_dtype != "fp32":
            raise LabkitError(
                "a 16-bit base computes in 16 bit; use --precision bf16-mixed or bf16"
            )
    P = count_parameters(s)
    trainable = trainable_shapes(
        s, method, r=lora_r, targets=lora_targets, frozen_layers=frozen_layers
    )
    n_train = sum(math.prod(x) for x in trainable.values())
    mixed = precision.endswith("-mixed")
    # a 16-bit LoRA base under autocast: the adapters' matmuls run in 16 bit
    base16_autocast = method == "lora" and mixed and base_dtype in {"bf16", "fp16"}
    act_dtype = "fp32" if precision == "fp32" else precision[:4]
    half = 2
    dry = None
    if not formula:
        from labkit.memory import dryrun

        lora = method in {"lora", "qlora"}
        dry = dryrun.training_activations(
            s,
            batch,
            seq,
            act_dtype,
            attention,
            checkpointing=checkpointing,
            dropout=dropout,
            autocast=mixed,
            method=method,
            lora_r=lora_r,
            lora_targets=lora_targets,
            adapter_dtype=("fp32" if precision == "fp32" else adapter_dtype) if lora else "fp32",
            base_dtype=base_dtype or ("fp32" if mixed and method == "lora" else None),
            frozen_layers=frozen_layers,
        )
    if method in {"full", "frozen"}:
        w_dtype = "fp32" if precision == "fp32" or mixed else "bf16"
        weights = weight_bytes(s, w_dtype)
        master = 0
        if mixed and dry is not None:  # measured by the dry run
            master = dry.param_copies
        elif mixed:  # the 16-bit copies autocast keeps of the weights it casts
            # autocast caches the casts of trainable weights for its whole region: all at once
            master = autocast_cast_parameters(s, trainable) * half
        weights += master
        grad_b = 4 if precision == "fp32" or mixed else 2
        state_b = grad_b
    else:
        # LoRA under autocast keeps the frozen base in fp32; pure bf16 keeps it in bf16
        base = "nf4" if method == "qlora" else ("fp32" if precision == "fp32" or mixed else "bf16")
        base = base_dtype or base
        choice("adapter dtype", adapter_dtype, ADAPTER_DTYPES)
        ab = 4 if precision == "fp32" else DTYPE_BYTES[adapter_dtype]
        weights = weight_bytes(s, base) + n_train * ab
        if dry is not None:  # autocast's cached copies of the adapters, measured
            weights += dry.param_copies
        elif method == "lora" and mixed and base == "fp32":  # autocast's 16-bit copies of the
            # frozen fp32 linears, kept by each matmul for its input's gradient (not cached:
            # they need no gradient, so with checkpointing only the recomputed block's copies)
            weights += autocast_cast_parameters(s, param_shapes(s), checkpointing) * half
        if dry is None and base16_autocast and ab > half:  # autocast caches 16-bit copies of
            weights += n_train * half  # the (trainable) adapters for its whole region
        grad_b = state_b = ab
    gradients = n_train * grad_b
    opt = optimizer_bytes(trainable, optimizer, state_b)
    if dry is not None:
        acts = dry.activations
    elif method in {"lora", "qlora"}:
        adapter_act = "fp32" if precision == "fp32" else adapter_dtype
        acts = lora_activation_bytes(
            s,
            batch,
            seq,
            lora_targets,
            lora_r,
            dtype=act_dtype,
            adapter_dtype=adapter_act,
            attention=attention,
            checkpointing=checkpointing,
            dropout=dropout,
            device=device,
            autocast=base16_autocast,
        )
    else:
        acts = activation_bytes(
            s,
            batch,
            seq,
            act_dtype,
            attention,
            checkpointing=checkpointing,
            dropout=dropout,
            device=device,
            trainable_from_layer=frozen_layers if method == "frozen" else 0,
            autocast=mixed,
        )
    activations = acts.activations
    T = batch * seq
    transient = T * vocab * (DTYPE_BYTES[act_dtype] + 4)
    total = weights + gradients + opt + activations + acts.logits + transient
    details = {
        "method": method,
        "precision": precision,
        "optimizer": optimizer,
        "batch": batch,
        "seq": seq,
        "grad_accum": grad_accum,
        "effective_batch": batch * grad_accum,
        "checkpointing": checkpointing,
        "attention": attention,
        "regime": regime(method, precision, base_dtype=base_dtype, adapter_dtype=adapter_dtype),
        "activation_items": acts.items,
        "activations_from": "formula" if formula else "dry-run",
        "optimizer_unsharded": optimizer_unsharded_bytes(trainable, optimizer),
    }
    return Breakdown(
        parameters=P,
        trainable_parameters=n_train,
        weights=weights,
        gradients=gradients,
        optimizer=opt,
        activations=activations,
        logits=acts.logits,
        kv_cache=0,
        transient=transient,
        total=total,
        details=details,
    )


def regime(
    method: str, precision: str, *, base_dtype: str | None = None, adapter_dtype: str = "fp32"
) -> str:
    """The precision regime of a :func:`training_memory` figure in words, e.g. "pure bf16",
    "bf16 autocast with fp32 master weights", "fp32", "LoRA: bf16 base + fp32 adapters, bf16
    autocast", "QLoRA: NF4 base + fp32 adapters, bf16 autocast"."""
    mixed = precision.endswith("-mixed")
    compute = {"fp32": "fp32", "bf16": "pure bf16"}.get(precision, f"{precision[:4]} autocast")
    if method in {"full", "frozen"}:
        return f"{compute} with fp32 master weights" if mixed else compute
    adapters = "fp32" if precision == "fp32" else adapter_dtype
    if precision in {"bf16", "fp16"}:  # "pure" would be wrong: the adapters keep their dtype
        compute = f"{precision} compute, no autocast"
    if method == "qlora":
        return f"QLoRA: NF4 base + {adapters} adapters, {compute}"
    base = base_dtype or ("fp32" if precision == "fp32" or mixed else "bf16")
    return f"LoRA: {base} base + {adapters} adapters, {compute}"


# ----------------------------------------------------------------------------- inference
def kv_heads_and_dim(config: Any) -> tuple[int, int]:
    """(key/value heads, head dim) of a causal LM config: GQA's n_kv, or the attention heads."""
    if is_formula_family(config):
        s = shape_of(config)
        return s.kv_heads, s.head_dim
    c = transformers_config(config).get_text_config()
    heads = getattr(c, "num_attention_heads", None)
    kv = getattr(c, "num_key_value_heads", None) or heads
    d = getattr(c, "head_dim", None) or (c.hidden_size // heads if heads else None)
    if not kv or not d:
        raise LabkitError(
            f"cannot read key/value heads and head dim from this {c.model_type} config; "
            "accepted: a config with num_attention_heads (num_key_value_heads, head_dim)"
        )
    return int(kv), int(d)


def cache_windows(config: Any) -> list[int | None]:
    """The tokens each layer's KV cache keeps at most: ``None`` for full attention, the window
    for sliding-window layers (Mistral, and the local layers of hybrid models: Gemma 2/3, Qwen2
    with ``use_sliding_window``), read from the cache transformers builds for the config."""
    if isinstance(config, Shape):
        return [None] * config.layers
    from transformers import DynamicCache

    cache = DynamicCache(config=transformers_config(config).get_text_config())
    return [getattr(layer, "sliding_window", None) for layer in cache.layers]


def kv_cache_bytes(config: Any, batch: int, context: int, dtype: str = "bf16") -> int:
    """KV cache: 2 · n_kv · d · b · bytes · (tokens kept) summed over the layers.

    A full-attention layer keeps all ``context`` tokens (2 · L · n_kv · d · s · b · bytes when all
    are full; GQA-aware); a sliding-window layer keeps at most its window (transformers 5 keeps
    the last window - 1 tokens as a view of the window it has just concatenated, so a window of
    storage). Hybrid models (Gemma 2/3: local and global layers alternating) mix both. A
    :class:`Shape` carries no window: all layers full.
    """
    batch, context = positive("batch", batch), positive("context length", context)
    if dtype not in DTYPE_BYTES:
        raise labkit.unknown("KV-cache dtype", dtype, ("fp32", "bf16", "fp16", "int8"))
    kv, d = kv_heads_and_dim(config)
    tokens = sum(min(context, w) if w else context for w in cache_windows(config))
    return 2 * kv * d * tokens * batch * DTYPE_BYTES[dtype]


def inference_memory(
    config: Any,
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 2048,
    kv_dtype: str | None = None,
    double_quant: bool = True,
    prefill: bool = False,
    attention: str = "sdpa",
) -> Breakdown:
    """Inference memory: weights (any dtype incl. int8 and NF4 with its quant-state) + KV cache
    for ``context`` tokens + the logits of one step (b·V fp32 for sampling, plus the prompt's
    last-position logits in the compute dtype).

    ``prefill``: also the peak of a prefill of the ``context`` tokens, by a dry run
    (:func:`labkit.memory.dryrun.prefill_peak`: the largest set of live tensors, in the compute dtype,
    16-bit for int8/NF4): activations, masks, the cache filled so far and the b·s·V logits a
    prefill computes. Then ``transient`` is what the prefill needs beyond KV cache + logits, and
    the total is weights + the larger of the two (``details["prefill_peak"]``).
    """
    s = config
    weights = weight_bytes(s, dtype, double_quant)
    kv_dtype = kv_dtype or ("bf16" if dtype in {"int8", "nf4"} else dtype)
    kv = kv_cache_bytes(s, batch, context, kv_dtype)
    _, vocab = layers_and_vocab(s)
    logits = batch * vocab * (4 + DTYPE_BYTES[kv_dtype])
    P = count_parameters(s)
    details: dict[str, Any] = {"dtype": dtype, "context": context}
    transient = 0
    if prefill:
        from labkit.memory import dryrun

        compute = dtype if dtype in {"fp32", "bf16", "fp16"} else "bf16"
        peak = dryrun.prefill_peak(s, batch, context, compute, attention)
        details.update(prefill_peak=peak["peak"], prefill_from="dry-run")
        transient = max(0, peak["peak"] - kv - logits)
    total = weights + kv + logits + transient
    zero = dict(trainable_parameters=0, gradients=0, optimizer=0, activations=0)
    return Breakdown(
        parameters=P,
        weights=weights,
        logits=logits,
        kv_cache=kv,
        transient=transient,
        total=total,
        details=details,
        **zero,
    )


# ----------------------------------------------------------------------------- sharding
def sharded(b: Breakdown, n_gpus: int, strategy: str = "ddp") -> Breakdown:
    """Per-GPU memory under data parallelism over ``n_gpus``.

    DDP replicates everything; ZeRO-1 shards the optimizer state, ZeRO-2 also the gradients,
    ZeRO-3 / FSDP full shard also the weights (plus one gathered block in flight, ignored here).
    Activations are per GPU (each GPU runs its own micro-batch) and never sharded.
    """
    positive("number of GPUs", n_gpus)
    choice("strategy", strategy, STRATEGIES)
    level = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[strategy]
    whole = b.details.get("optimizer_unsharded", 0)  # scalars every rank keeps in full
    opt = math.ceil((b.optimizer - whole) / n_gpus) + whole if level >= 1 else b.optimizer
    grads = math.ceil(b.gradients / n_gpus) if level >= 2 else b.gradients
    weights = math.ceil(b.weights / n_gpus) if level >= 3 else b.weights
    total = weights + grads + opt + b.activations + b.logits + b.kv_cache + b.transient
    details = {**b.details, "strategy": strategy, "n_gpus": n_gpus}
    return replace(
        b,
        weights=weights,
        gradients=grads,
        optimizer=opt,
        total=total,
        gpus_needed=n_gpus,
        details=details,
    )


def round_to_nodes(n_gpus: int, per_node: int = 8) -> int:
    """GPUs come in nodes of 8: up to one node any count works, beyond it whole nodes (17 → 24)."""
    positive("number of GPUs", n_gpus)
    return n_gpus if n_gpus <= per_node else per_node * math.ceil(n_gpus / per_node)


def gpus_needed(
    b: Breakdown, gpu_bytes: float, strategy: str = "zero3", max_gpus: int = 4096
) -> int:
    """The fewest GPUs (whole 8-GPU nodes beyond one node) on which ``b`` fits per GPU.

    Raises :class:`LabkitError` when even ``max_gpus`` are not enough (e.g. DDP, or activations
    alone larger than one GPU).
    """
    if gpu_bytes <= 0:
        raise LabkitError(f"GPU memory must be positive, got {gpu_bytes}")
    n = 1
    while n <= max_gpus:
        n = round_to_nodes(n)
        if sharded(b, n, strategy).total <= gpu_bytes:
            return n
        n += 1
    raise LabkitError(
        f"does not fit on {max_gpus} GPUs of {gpu_bytes / 2**30:.0f} GiB with {strategy}; "
        "shard more (zero3), use checkpointing or a smaller micro-batch"
    )


# ----------------------------------------------------------------------------- time
def training_flops(parameters: float, tokens: float, recompute: bool = False) -> float:
    """C ≈ 6·P·D (2 forward + 4 backward); 8·P·D with full activation recomputation."""
    return (8 if recompute else 6) * parameters * tokens


def _positive_number(name: str, value: Any) -> float:
    """``value`` if it is a finite number > 0 (not nan, not inf), else one line naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise LabkitError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def training_days(
    parameters: float,
    tokens: float,
    n_gpus: int,
    flops_per_gpu: float,
    recompute: bool = True,
) -> float:
    """Days to train: FLOPs / (N · X), X = achieved FLOP/s per GPU (peak × MFU).

    With ``recompute`` (Narayanan et al. 2021) GPT-3 (175e9, 300e9 tokens, 1024 GPUs at
    140 TFLOP/s) gives about 34 days.
    """
    positive("number of GPUs", n_gpus)
    for name, value in (("parameters", parameters), ("tokens", tokens)):
        _positive_number(name, value)
    _positive_number("FLOP/s per GPU", flops_per_gpu)
    return training_flops(parameters, tokens, recompute) / (n_gpus * flops_per_gpu) / 86400


# ----------------------------------------------------------------------------- rules of thumb
def rule_weights(parameters: float, dtype: str = "fp16") -> float:
    """The common rule "a 6B model in fp16 is 12 GB": P × bytes per parameter (whole-byte
    dtypes only; NF4's 4.127 bits per weight are in :func:`weight_bytes`)."""
    choice("dtype of the rule of thumb", dtype, DTYPE_BYTES)
    return parameters * DTYPE_BYTES[dtype]


def rule_training_8x(parameters: float) -> float:
    """The common rule "training needs at least 8× the fp16 weights" (16 B/param)."""
    return 8 * rule_weights(parameters, "fp16")


def rule_training_mixed_adamw(parameters: float) -> float:
    """Mixed-precision AdamW's 16 B/param: 2 (16-bit weights) + 2 (16-bit gradients) + 12 (fp32
    master weights, m and v), as in the ZeRO paper; the same total as "8× the fp16 weights",
    with the bytes named. Activations are not in it."""
    return (2 + 2 + 12) * parameters


def rule_training_12(parameters: float) -> float:
    """The common rule "1B params: 2 GB weights + 2 GB grads + 8 GB AdamW" (12 B/param)."""
    return 12 * parameters


def rule_inference_2x(parameters: float, dtype: str = "fp16") -> float:
    """The common rule "inference ≈ 2× the weights"."""
    return 2 * rule_weights(parameters, dtype)


def rule_activations_korthikanti(
    layers: int, hidden: int, heads: int, seq: int, batch: int
) -> float:
    """Korthikanti et al.: L · s·b·h·(34 + 5·a·s/h) bytes (16-bit, GPT block, no flash)."""
    return layers * seq * batch * hidden * (34 + 5 * heads * seq / hidden)
