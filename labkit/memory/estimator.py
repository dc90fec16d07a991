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
  for all five families (:func:`labkit.memory.activations.job_activation_bytes`: a frozen op keeps
  only what a gradient still needs) and is exact for any targets in fp32 and pure bf16, eager
  and SDPA, checkpointing on and off, and on a bf16 base under bf16 autocast (Llama, Qwen2,
  SDPA);
- ``transient`` (logits held by the model output and the loss gradient during backward) and the
  CUDA allocator are only checked on a GPU (scripts/gpu_validate_memory.py).

The options of a training step are one :class:`labkit.memory.job.TrainingJob`; sharding over GPUs
is in :mod:`labkit.memory.sharding`, the rules of thumb in :mod:`labkit.memory.rules`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import boolean, choice, number, positive
from labkit.dtypes import DTYPE_BYTES, DTYPE_NAMES, OPTIMIZERS, PRECISIONS, quantized_bytes
from labkit.memory.activations import job_activation_bytes, sequence_length
from labkit.memory.job import Breakdown, OptionError, TrainingJob
from labkit.memory.sharding import (
    REGIMES,
    fsdp_gathered,
    gpus_needed,
    regime_total,
    round_to_nodes,
    sharded,
)
from labkit.models.architecture import (
    FORMULA_FAMILIES,
    Shape,
    count_parameters,
    model_type_of,
    module_table,
    param_shapes,
    quantization_of,
    shape_of,
    transformers_config,
)
from labkit.models.targets import block_linears, trainable_shapes

__all__ = [  # what notebooks and other layers read here; sharding's six are re-exported:
    # notebooks 01, 03, 15, distributed.parallel and the exercise keys call estimator.sharded etc.
    "OPTIMIZERS",
    "PRECISIONS",
    "REGIMES",
    "WEIGHT_DTYPES",
    "Breakdown",
    "TrainingJob",
    "autocast_cast_parameters",
    "cache_windows",
    "fsdp_gathered",
    "gpus_needed",
    "inference_memory",
    "is_formula_family",
    "kv_cache_bytes",
    "kv_heads_and_dim",
    "layers_and_vocab",
    "loaded_dtype",
    "nf4_bytes",
    "optimizer_bytes",
    "optimizer_unsharded_bytes",
    "quantized_ratio",
    "regime_total",
    "round_to_nodes",
    "sharded",
    "training_days",
    "training_flops",
    "training_memory",
    "unquantized_share",
    "weight_bytes",
]

WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
#: Bytes per parameter of what int8/nf4 loading leaves unquantized (embeddings, norms, the head):
#: bitsandbytes keeps it 16-bit.
UNQUANTIZED_BYTES = 2
#: bitsandbytes 8-bit optimizers keep 32-bit state for tensors smaller than this (``min_8bit_size``).
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256


# ----------------------------------------------------------------------------- weights
def nf4_bytes(numel: int, double_quant: bool = True, blocksize: int = 64) -> float:
    """Bytes of one NF4-quantized weight: 4-bit codes + absmax constants
    (:func:`labkit.dtypes.quantized_bytes`; with double quantization 4.127 bits per weight)."""
    return quantized_bytes(numel, 4, blocksize, double_quant=double_quant)


def loaded_dtype(config: Any) -> str:
    """The weights' dtype of a model loaded with ``from_pretrained`` and no ``dtype=``: the dtype
    the config names (``fp32``, ``bf16`` or ``fp16``).

    transformers 5 loads with ``dtype="auto"`` by default: the dtype in ``config.json`` (the
    checkpoint's own; most hub LLMs store bf16 or fp16), not fp32 as transformers 4 did. A config
    that names none is refused: transformers then reads the dtype from the checkpoint's first
    floating-point tensor, which a config alone cannot tell.
    """
    c = transformers_config(config).get_text_config()
    named = getattr(c, "dtype", None)
    name = str(named).removeprefix("torch.") if named is not None else None
    if name not in DTYPE_NAMES or DTYPE_NAMES[name] == "int8":
        raise LabkitError(
            f"this {c.model_type} config names no weight dtype ({named!r}), so from_pretrained "
            "without dtype= reads it from the checkpoint's tensors; accepted: a config whose "
            "dtype is float32, bfloat16 or float16, or a dtype given explicitly"
        )
    return DTYPE_NAMES[name]


def weight_bytes(config: Any, dtype: str = "bf16", double_quant: bool = True) -> int:
    """Bytes of all weights in ``dtype``; int8/nf4 quantize the block linears only.

    Embeddings, norms and the output head stay 16-bit under int8/nf4, as bitsandbytes does.
    int8 (LLM.int8) adds one fp32 scale per output row; nf4 adds its quant-state (absmax).
    ``dtype="auto"``: the model as ``from_pretrained`` loads it without ``dtype=``, in the dtype
    its config names (:func:`loaded_dtype`).
    """
    choice("weight dtype", dtype, (*WEIGHT_DTYPES, "auto"))
    boolean("double_quant", double_quant)
    s, quantized = _quantized_linears(config)
    if dtype == "auto":
        dtype = loaded_dtype(config)
    total = 0.0
    for name, shp in param_shapes(s).items():
        n = math.prod(shp)
        if dtype == "int8" and name in quantized:
            total += n + 4 * quantized[name]
        elif dtype == "nf4" and name in quantized:
            total += nf4_bytes(n, double_quant)
        else:  # unquantized tensors: the dtype itself, or 16-bit beside int8/nf4 linears
            total += n * (UNQUANTIZED_BYTES if dtype in {"int8", "nf4"} else DTYPE_BYTES[dtype])
    return int(math.ceil(total))


def _quantized_linears(config: Any) -> tuple[Any, dict[str, int]]:
    """(the config's shape, block-linear weight name -> its output rows): what int8/nf4 loading
    quantizes, for :func:`weight_bytes` and :func:`unquantized_share`; refuses a quantized
    checkpoint's config (:func:`check_unquantized`)."""
    check_unquantized(config)
    s = shape_of(config) if is_formula_family(config) else config
    return s, {f"{m.name}.weight": m.d_out for m in block_linears(s)}


def unquantized_share(config: Any) -> float:
    """Share of the parameters that int8/nf4 loading leaves unquantized: everything outside the
    block linears (embeddings, norms, the output head; a tied head counts once)."""
    s, quantized = _quantized_linears(config)
    shapes = param_shapes(s)
    total = sum(math.prod(shp) for shp in shapes.values())
    return sum(math.prod(shp) for n, shp in shapes.items() if n not in quantized) / total


def quantized_ratio(
    config: Any, quantized: str = "int8", base: str = "bf16", double_quant: bool = True
) -> float:
    """Weight bytes with the block linears in ``quantized`` (int8/nf4, as :func:`weight_bytes`)
    and everything else kept in ``base``, over the bytes of all weights in ``base``."""
    choice("quantized dtype", quantized, ("int8", "nf4"))
    choice("base dtype", base, ("fp32", "bf16", "fp16"))
    share = unquantized_share(config)
    full = weight_bytes(config, base)
    rest = share * full  # the unquantized part in base; weight_bytes books it at UNQUANTIZED_BYTES
    return (
        weight_bytes(config, quantized, double_quant)
        - rest * UNQUANTIZED_BYTES / DTYPE_BYTES[base]
        + rest
    ) / full


def check_unquantized(config: Any) -> None:
    """Refuse the config of an already-quantized checkpoint (``quantization_config``): the
    estimates size the weights in the dtype they are asked for, so its own 4- or 8-bit weights
    would be sized as something else. A bitsandbytes checkpoint is the unquantized model's
    config with ``dtype="nf4"`` / ``"int8"`` (or QLoRA); GPTQ and AWQ weights are not sized."""
    q = quantization_of(config)
    if q is None:
        return
    method = q.get("quant_method", "unknown")
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None
        use = "{dtype:nf4} or {method:qlora}" if bits == 4 else "{dtype:int8}"
        raise OptionError(
            f"this config is of a checkpoint already quantized by bitsandbytes ({bits}-bit "
            "quantization_config); labkit sizes weights from the unquantized config: remove "
            f"quantization_config and use {use}"
        )
    raise OptionError(
        f"this config is of a checkpoint already quantized with {method} ({q.get('bits', '?')}-bit "
        "quantization_config), whose weights labkit does not size; accepted: the config of the "
        "unquantized model"
    )


# ----------------------------------------------------------------------------- families
def is_formula_family(config: Any) -> bool:
    """True for a :class:`Shape` or a config of the five formula families (their activations are
    derived in :mod:`labkit.memory.activations`); any other causal LM goes through :mod:`labkit.memory.dryrun`."""
    return isinstance(config, Shape) or model_type_of(config) in FORMULA_FAMILIES


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
      plus a 4-byte RMS scalar tensor per tensor, all fp32 whatever ``state_bytes`` (it casts a
      16-bit gradient to fp32 before it makes its state);
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
            total += 4 * ((math.prod(shp[:-1]) + shp[-1]) if len(shp) >= 2 else n) + 4
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


def training_memory(config: Any, job: TrainingJob | None = None, /, **options: Any) -> Breakdown:
    """Training memory of one GPU (no sharding) in bytes for ``job`` (a
    :class:`~labkit.memory.job.TrainingJob`, or its options as keywords: ``method``,
    ``precision``, ``batch``, ``seq``, ...): weights, gradients, optimizer state, activations,
    logits (loss buffer), transient, total.

    Precision: ``fp32``; ``bf16-mixed``/``fp16-mixed`` = fp32 master weights + the 16-bit copies
    autocast makes of the weights it casts (:func:`autocast_cast_parameters`: the linears and the
    head, not embeddings or norms), fp32 gradients (4) and fp32 optimizer state, activations under
    autocast: just under the 18 B/param of HF's "model training anatomy", which assumes every
    weight is copied; ``bf16`` = everything in bf16 (pure). QLoRA: NF4 base with double quant,
    LoRA adapters in ``adapter_dtype``. LoRA's base is in the compute dtype unless ``base_dtype``
    says otherwise (a 16-bit base under autocast: no fp32 copy, no autocast copies of it; the fp32
    adapters get cached 16-bit copies and compute in 16 bit; an fp32 base under autocast: the
    16-bit copies of its linears that each matmul keeps). ``transient``: the logits the model
    output keeps (b·s·V, activation dtype) plus the fp32 loss gradient at the start of backward.
    ``details["regime"]`` names the regime in words (:attr:`TrainingJob.regime`).
    ``master_weights``: under mixed precision, the fp32 trainable weights (or fp32 adapters): the
    master copy the optimizer updates, which :func:`labkit.memory.sharding.sharded` shards with the
    optimizer state from ZeRO-1 on (DeepSpeed's regime, where the optimizer owns that copy).

    The five formula families (:func:`is_formula_family`) take their activations from the
    derivation in :mod:`labkit.memory.activations`; any other causal LM transformers can build from
    a dry run (:func:`labkit.memory.dryrun.training_activations`: one fake CPU step, measured as
    :mod:`labkit.memory.measure` measures a real one), whose autocast weight copies are measured too
    (with a frozen fp32 LoRA base under autocast, the frozen weights' 16-bit copies are in the
    dry run's activations). ``details["activations_from"]`` says which: ``formula`` or
    ``dry-run``.
    """
    job = TrainingJob.of(job, options)
    check_unquantized(config)
    formula = is_formula_family(config)
    s = shape_of(config) if formula else config
    layers, vocab = layers_and_vocab(s)
    job.check_layers(layers)
    trainable = trainable_shapes(
        s, job.method, r=job.lora_r, targets=job.lora_targets, frozen_layers=job.frozen_layers
    )
    if formula:
        acts, copies = job_activation_bytes(s, job), None
    else:
        from labkit.memory import dryrun  # imports torch: only for a family without a formula

        dry = dryrun.training_activations(s, job)
        acts, copies = dry.activations, dry.param_copies
    n_train = sum(math.prod(x) for x in trainable.values())
    state_b = DTYPE_BYTES[job.adapters if job.lora else job.precision.weights]
    weights = _weights_and_copies(s, job, trainable, copies)
    gradients = n_train * state_b
    opt = optimizer_bytes(trainable, job.optimizer, state_b)
    transient = job.batch * job.seq * vocab * (DTYPE_BYTES[job.precision.compute] + 4)
    # mixed precision: the fp32 trainable weights are the master copy the optimizer updates
    master = n_train * state_b if job.precision.mixed and state_b == DTYPE_BYTES["fp32"] else 0
    details = {
        **{k: getattr(job, k) for k in ("method", "optimizer", "batch", "seq", "grad_accum")},
        "precision": job.precision.name,
        "effective_batch": job.batch * job.grad_accum,
        "checkpointing": job.checkpointing,
        "attention": job.attention,
        "regime": job.regime,
        "activation_items": acts.items,
        "activations_from": "formula" if formula else "dry-run",
    }
    return Breakdown(
        parameters=count_parameters(s),
        trainable_parameters=n_train,
        weights=weights,
        gradients=gradients,
        optimizer=opt,
        activations=acts.activations,
        logits=acts.logits,
        kv_cache=0,
        transient=transient,
        total=weights + gradients + opt + acts.activations + acts.logits + transient,
        optimizer_unsharded=optimizer_unsharded_bytes(trainable, job.optimizer),
        master_weights=master,
        details=details,
    )


def _weights_and_copies(
    s: Any, job: TrainingJob, trainable: Mapping[str, tuple[int, ...]], copies: int | None
) -> int:
    """The weights (and adapters) in their dtypes plus the 16-bit copies autocast keeps of them;
    ``copies``: the copies a dry run measured (None for a formula family)."""
    half = 2
    if not job.lora:
        weights = weight_bytes(s, job.precision.weights)
        if job.precision.mixed:  # the 16-bit copies autocast keeps of the weights it casts:
            # it caches the casts of trainable weights for its whole region, all at once
            weights += (
                copies if copies is not None else autocast_cast_parameters(s, trainable) * half
            )
        return weights
    n_train = sum(math.prod(x) for x in trainable.values())
    adapter_b = DTYPE_BYTES[job.adapters]
    weights = weight_bytes(s, job.weight_dtype) + n_train * adapter_b
    if copies is not None:  # autocast's cached copies of the adapters, measured
        return weights + copies
    if job.method == "lora" and job.precision.mixed and job.weight_dtype == "fp32":
        # autocast's 16-bit copies of the frozen fp32 linears, kept by each matmul for its input's
        # gradient (not cached: they need no gradient, so with checkpointing only the recomputed
        # block's copies)
        weights += autocast_cast_parameters(s, param_shapes(s), job.checkpointing) * half
    if job.adapters_autocast and adapter_b > half:  # autocast caches 16-bit copies of the
        weights += n_train * half  # (trainable) adapters for its whole region
    return weights


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
    from transformers import DynamicCache  # imports transformers: only for a real config

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
    if is_formula_family(s):  # learned positions (GPT-2) hold no token past their table
        sequence_length(shape_of(s), context)
    kv_dtype = kv_dtype or ("bf16" if dtype in {"int8", "nf4"} else dtype)
    kv = kv_cache_bytes(s, batch, context, kv_dtype)
    _, vocab = layers_and_vocab(s)
    logits = batch * vocab * (4 + DTYPE_BYTES[kv_dtype])
    P = count_parameters(s)
    details: dict[str, Any] = {
        "dtype": dtype,
        "context": context,
        "kv_dtype": kv_dtype,
        "regime": f"inference, {dtype} weights",
    }
    transient = 0
    if prefill:
        from labkit.memory import dryrun  # imports torch: only for the prefill

        compute = dtype if dtype in {"fp32", "bf16", "fp16"} else "bf16"
        peak = dryrun.prefill_peak(s, batch, context, compute, attention)
        details.update(
            prefill_peak=peak["peak"],
            prefill_from="dry-run",
            activations_from="dry-run (prefill peak)",
        )
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


# ----------------------------------------------------------------------------- time
def training_flops(parameters: float, tokens: float, recompute: bool = False) -> float:
    """C ≈ 6·P·D (2 forward + 4 backward); 8·P·D with full activation recomputation."""
    for name, value in (("parameters", parameters), ("tokens", tokens)):
        number(name, value, low=0)
    return (8 if boolean("recompute", recompute) else 6) * parameters * tokens


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
        number(name, value, above=0)
    number("FLOP/s per GPU", flops_per_gpu, above=0)
    return training_flops(parameters, tokens, recompute) / (n_gpus * flops_per_gpu) / 86400
