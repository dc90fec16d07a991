"""Memory and training-time estimates from a model config alone (no weights are loaded).

Everything here is a pure function of a config (a ``transformers`` config, a dict, or a name that
:func:`labkit.zoo.load_config` resolves) plus sizes. The figures are in bytes and are meant to be
*checked*, not trusted: :mod:`labkit.measure` measures the same quantities on real models.

What is exact and what is a model of reality:

- parameter counts, and the bytes of weights, gradients and optimizer state (AdamW, SGD with
  momentum, Adafactor, bitsandbytes 8-bit AdamW) are exact: they equal the bytes of the real tensors
  after a real step on CPU (tests/test_measure.py);
- ``activations + logits`` is exactly what autograd saves for backward (the saved-tensor
  measurement in :mod:`labkit.measure`), derived op by op from the transformers 5.24 modeling code of
  each family (Korthikanti et al.'s method, re-derived): exact for full fine-tuning of all five
  families in fp32 and pure bf16, eager and SDPA, checkpointing on and off, and under bf16 autocast
  (mixed precision) for Llama, Mistral and Qwen2, whose 16-bit weight copies equal the working
  copy counted with the weights (:func:`autocast_cast_parameters`). LoRA is derived the same way
  for all five families (:func:`lora_activation_bytes`: a frozen op keeps only what a gradient
  still needs) and is exact for any targets in fp32 and pure bf16, eager and SDPA, checkpointing
  on and off;
- ``transient`` (logits held by the model output and the loss gradient during backward) and the
  CUDA allocator are only checked on a GPU (scripts/gpu_validate_memory.py).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit import LabkitError

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "bloom")
METHODS = ("full", "lora", "qlora", "frozen")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
OPTIMIZERS = ("adamw", "sgd", "adafactor", "adamw8bit")
ATTENTIONS = ("eager", "sdpa")
DEVICES = ("cuda", "cpu")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
#: bytes per element of the dtypes the estimators accept (``nf4`` is handled separately).
DTYPE_BYTES = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "int8": 1,
}
_DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
_DTYPE_NAMES |= {"fp16": "fp16", "float16": "fp16"}
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
#: bitsandbytes 8-bit optimizers keep 32-bit state for tensors smaller than this (``min_8bit_size``).
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256
#: Linear layers a LoRA/QLoRA adapter can target, per family.
LINEAR_NAMES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}

#: The LoRA targets peft picks when ``target_modules`` is None (its per-model-type mapping, held
#: here so the estimator needs no peft import; a test compares them): ``targets="default"``.
PEFT_DEFAULT_TARGETS = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "bloom": ("query_key_value",),
}


def _family(model_type: str) -> str:
    return "llama" if model_type in {"llama", "mistral", "qwen2"} else model_type


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only config that memory depends on (symbols as in facts.md)."""

    model_type: str
    layers: int  # L
    hidden: int  # h
    heads: int  # a
    kv_heads: int  # n_kv
    head_dim: int  # d
    intermediate: int  # i
    vocab: int  # V
    tied: bool
    positions: int = 0  # learned position embeddings (GPT-2)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0

    @property
    def family(self) -> str:
        return _family(self.model_type)


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LabkitError(f"{name} must be a positive integer, got {value!r}")
    return value


def shape_of(config: Any) -> Shape:
    """Read a :class:`Shape` from a transformers config, a config dict, a name or a :class:`Shape`.

    Raises :class:`LabkitError` for families other than Llama, Mistral, Qwen2, GPT-2 and BLOOM,
    for non-positive sizes, and when the heads do not divide the hidden size.
    """
    if isinstance(config, Shape):
        return config
    if isinstance(config, str | os.PathLike):
        from labkit import zoo

        config = zoo.load_config(config)
    c = dict(config) if isinstance(config, Mapping) else config.to_dict()
    mt = c.get("model_type")
    if mt not in FAMILIES:
        raise LabkitError(f"model_type {mt!r} is not supported; accepted: {', '.join(FAMILIES)}")
    if mt == "gpt2":
        h, a, L = c.get("n_embd", 768), c.get("n_head", 12), c.get("n_layer", 12)
        kv, i = a, c.get("n_inner") or 4 * h if isinstance(h, int) else 0
        extra = dict(
            positions=c.get("n_positions", 1024),
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            activation=c.get("activation_function", "gelu_new"),
            embd_dropout=c.get("embd_pdrop", 0.1),
            attn_dropout=c.get("attn_pdrop", 0.1),
            resid_dropout=c.get("resid_pdrop", 0.1),
        )
        tied = c.get("tie_word_embeddings", True)
    elif mt == "bloom":
        h = c.get("hidden_size", c.get("n_embed", 64))
        a, L = c.get("n_head", 8), c.get("n_layer", 2)
        kv, i = a, 4 * h if isinstance(h, int) else 0
        extra = dict(
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            activation="bloom_gelu",
            attn_dropout=c.get("attention_dropout", 0.0),
            resid_dropout=c.get("hidden_dropout", 0.0),
        )
        tied = c.get("tie_word_embeddings", True)
    else:
        h, a, L = c.get("hidden_size"), c.get("num_attention_heads"), c.get("num_hidden_layers")
        kv = c.get("num_key_value_heads") or a
        i = c.get("intermediate_size")
        bias = bool(c.get("attention_bias", False))
        extra = dict(
            qkv_bias=True if mt == "qwen2" else bias,
            o_bias=False if mt == "qwen2" else bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            activation=c.get("hidden_act", "silu"),
            attn_dropout=c.get("attention_dropout", 0.0),
        )
        tied = c.get("tie_word_embeddings", False)
    for name, value in (("hidden size", h), ("attention heads", a), ("layers", L)):
        _positive(name, value)
    _positive("key/value heads", kv)
    _positive("intermediate size", i)
    V = _positive("vocab size", c.get("vocab_size"))
    d = c.get("head_dim") if mt not in {"gpt2", "bloom"} else None
    if d is None:
        if h % a:
            raise LabkitError(f"{a} attention heads do not divide hidden size {h}; they must")
        d = h // a
    _positive("head dim", d)
    if a % kv:
        raise LabkitError(f"{kv} key/value heads do not divide {a} attention heads; they must")
    return Shape(mt, L, h, a, kv, d, i, V, bool(tied), **extra)


# ----------------------------------------------------------------------------- parameters
def param_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor's name and shape, as ``model.named_parameters()`` lists them.

    Tied output embeddings are listed once (under the input embedding), as PyTorch does.
    """
    s = shape_of(config)
    L, h, a, kv, d, i, V = (
        s.layers,
        s.hidden,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.intermediate,
        s.vocab,
    )
    out: dict[str, tuple[int, ...]] = {}
    if s.family == "llama":
        out["model.embed_tokens.weight"] = (V, h)
        for n in range(L):
            p = f"model.layers.{n}."
            for proj, rows in (("q_proj", a * d), ("k_proj", kv * d), ("v_proj", kv * d)):
                out[f"{p}self_attn.{proj}.weight"] = (rows, h)
                if s.qkv_bias:
                    out[f"{p}self_attn.{proj}.bias"] = (rows,)
            out[f"{p}self_attn.o_proj.weight"] = (h, a * d)
            if s.o_bias:
                out[f"{p}self_attn.o_proj.bias"] = (h,)
            for proj, shp in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                out[f"{p}mlp.{proj}.weight"] = shp
                if s.mlp_bias:
                    out[f"{p}mlp.{proj}.bias"] = (shp[0],)
            out[f"{p}input_layernorm.weight"] = (h,)
            out[f"{p}post_attention_layernorm.weight"] = (h,)
        out["model.norm.weight"] = (h,)
    elif s.family == "gpt2":
        out["transformer.wte.weight"] = (V, h)
        out["transformer.wpe.weight"] = (s.positions, h)
        for n in range(L):
            p = f"transformer.h.{n}."
            for name, shp in (
                ("ln_1", None),
                ("attn.c_attn", (h, 3 * h)),
                ("attn.c_proj", (h, h)),
                ("ln_2", None),
                ("mlp.c_fc", (h, i)),
                ("mlp.c_proj", (i, h)),
            ):
                if shp is None:  # LayerNorm
                    out[f"{p}{name}.weight"], out[f"{p}{name}.bias"] = (h,), (h,)
                else:  # Conv1D stores (in, out)
                    out[f"{p}{name}.weight"], out[f"{p}{name}.bias"] = shp, (shp[1],)
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (h,), (h,)
    else:  # bloom
        out["transformer.word_embeddings.weight"] = (V, h)
        out["transformer.word_embeddings_layernorm.weight"] = (h,)
        out["transformer.word_embeddings_layernorm.bias"] = (h,)
        for n in range(L):
            p = f"transformer.h.{n}."
            for name, shp in (
                ("input_layernorm", (h,)),
                ("self_attention.query_key_value", (3 * h, h)),
                ("self_attention.dense", (h, h)),
                ("post_attention_layernorm", (h,)),
                ("mlp.dense_h_to_4h", (i, h)),
                ("mlp.dense_4h_to_h", (h, i)),
            ):
                out[f"{p}{name}.weight"], out[f"{p}{name}.bias"] = shp, (shp[0],)
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (h,), (h,)
    if not s.tied:
        out["lm_head.weight"] = (V, h)
    return out


def count_parameters(config: Any) -> int:
    """Exact parameter count (tied embeddings once, GQA, biases, norms): ``sum(p.numel())``."""
    return sum(math.prod(shp) for shp in param_shapes(config).values())


def _is_linear(name: str, family: str) -> bool:
    mod = name.rsplit(".", 2)[-2]
    return name.endswith(".weight") and mod in LINEAR_NAMES[family]


def _linear_dims(name: str, shp: tuple[int, ...], family: str) -> tuple[int, int]:
    """(d_in, d_out) of a linear weight (GPT-2's Conv1D stores (in, out), nn.Linear (out, in))."""
    return (shp[0], shp[1]) if family == "gpt2" else (shp[1], shp[0])


def lora_targets(config: Any, targets: str | Iterable[str]) -> list[str]:
    """Names of the linear weights a LoRA adapter on ``targets`` adapts.

    ``targets``: module names (``["q_proj", "v_proj"]``), a comma-separated string,
    ``"all-linear"`` (every linear in the blocks, not the output head, as peft does) or
    ``"default"`` (peft's default for the model type: q and v, GPT-2's ``c_attn``, BLOOM's
    ``query_key_value``).
    """
    s = shape_of(config)
    names = LINEAR_NAMES[s.family]
    if targets == "default":
        targets = PEFT_DEFAULT_TARGETS[s.model_type]
    elif isinstance(targets, str):
        targets = names if targets == "all-linear" else [t for t in targets.split(",") if t]
    targets = list(targets)
    bad = [t for t in targets if t not in names]
    if bad or not targets:
        raise LabkitError(
            f"unknown LoRA target(s) {bad or targets!r} for {s.model_type}; "
            f"accepted: {', '.join(names)}, all-linear or default"
        )
    return [n for n in param_shapes(s) if _is_linear(n, s.family) and n.split(".")[-2] in targets]


def lora_parameters(config: Any, r: int, targets: str | Iterable[str]) -> int:
    """LoRA trainable parameters: r·(d_in + d_out) per adapted matrix (facts.md)."""
    _positive("LoRA rank r", r)
    s = shape_of(config)
    shapes = param_shapes(s)
    return sum(r * sum(_linear_dims(n, shapes[n], s.family)) for n in lora_targets(s, targets))


# ----------------------------------------------------------------------------- weights
def nf4_bytes(numel: int, double_quant: bool = True, blocksize: int = 64) -> float:
    """Bytes of one NF4-quantized weight: 4-bit codes + absmax constants.

    Double quantization stores the per-64 absmax in 8 bits with one fp32 constant per 256 blocks:
    4 + 8/64 + 32/(64·256) = 4.127 bits per weight (QLoRA paper).
    """
    blocks = math.ceil(numel / blocksize)
    if not double_quant:
        return numel / 2 + 4 * blocks
    return numel / 2 + blocks + 4 * math.ceil(blocks / 256)


def weight_bytes(config: Any, dtype: str = "bf16", double_quant: bool = True) -> int:
    """Bytes of all weights in ``dtype``; int8/nf4 quantize the block linears only.

    Embeddings, norms and the output head stay 16-bit under int8/nf4, as bitsandbytes does.
    int8 (LLM.int8) adds one fp32 scale per output row; nf4 adds its quant-state (absmax).
    """
    if dtype not in WEIGHT_DTYPES:
        raise LabkitError(f"unknown weight dtype {dtype!r}; accepted: {', '.join(WEIGHT_DTYPES)}")
    s = shape_of(config)
    total = 0.0
    for name, shp in param_shapes(s).items():
        n = math.prod(shp)
        if dtype in {"int8", "nf4"} and _is_linear(name, s.family):
            if dtype == "int8":
                total += n + 4 * _linear_dims(name, shp, s.family)[1]
            else:
                total += nf4_bytes(n, double_quant)
        else:
            total += n * DTYPE_BYTES.get(dtype, 2)
    return int(math.ceil(total))


# ----------------------------------------------------------------------------- activations
@dataclass
class Activations:
    """What autograd saves for backward, in bytes, by where it comes from.

    ``activations``: everything but the loss; ``logits``: the loss buffer (log-softmax output in
    fp32, b·s·V·4, plus the shifted labels and a scalar). ``per_layer``: one block (no
    checkpointing); ``recompute``: the extra bytes one block re-saves during backward when
    checkpointing is on (0 otherwise).
    """

    activations: int
    logits: int
    per_layer: int
    recompute: int
    items: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.activations + self.logits


def _check_choice(name: str, value: str, accepted: Iterable[str]) -> str:
    accepted = tuple(accepted)
    if value not in accepted:
        raise LabkitError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
    return value


def _check_attention(s: Shape, attention: str) -> None:
    _check_choice("attention", attention, ATTENTIONS)
    if s.family == "bloom" and attention == "sdpa":
        raise LabkitError("BLOOM has no SDPA attention in transformers 5.24; use --attention eager")


def _activation_dtype(dtype: str) -> str:
    if dtype not in DTYPE_BYTES or DTYPE_BYTES[dtype] == 1:
        raise LabkitError(f"unknown activation dtype {dtype!r}; accepted: fp32, bf16, fp16")
    return dtype


def _loss_bytes(s: Shape, b: int, q: int) -> int:
    """What the loss keeps: the fp32 log-softmax (b·s·V), the shifted labels (a view of the padded
    b·(s+1) labels when b = 1, else a contiguous copy) and the scalar total_weight of nll_loss."""
    return b * q * s.vocab * 4 + (q + 1 if b == 1 else b * q) * 8 + 4


def activation_bytes(
    config: Any,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    attention: str = "sdpa",
    checkpointing: bool = False,
    dropout: bool = True,
    device: str = "cuda",
    trainable_from_layer: int = 0,
    autocast: bool = False,
) -> Activations:
    """Bytes autograd keeps for backward in one training step (the saved-tensor measurement).

    Derived from the transformers 5.24 modeling code, op by op (what each op saves for backward):
    RMSNorm saves its fp32 input, the rsqrt, the normalised value and its output; LayerNorm its
    input, mean and rstd; SiLU its input, the gating product both operands; GeLU-tanh (GPT-2's
    ``gelu_new``, written in Python) five b·s·i tensors; eager attention q, k, v, the b·a·s²
    softmax output (fp32 in Llama/Qwen2/Mistral/BLOOM, plus its cast copy when 16-bit) and the
    output; SDPA q, k, v (GQA-sized), output and the fp32 logsumexp, no s² term (on CPU, dropout
    inside SDPA falls back to the math kernel, which keeps the s² terms). Dropout keeps a mask of
    the activation dtype on CPU and 1 byte on CUDA.

    ``dtype``: activation dtype (``fp32``, ``bf16``, ``fp16``). ``dropout``: training mode (the
    config's dropout probabilities apply). ``checkpointing``: layer inputs only are kept in forward,
    plus one block recomputed during backward (``recompute``); the total is their sum.
    ``trainable_from_layer``: with the embeddings and the first k blocks frozen, autograd saves
    nothing for them; the first trainable block's RMSNorm keeps no input (no gradient flows into
    it) and a tied head, frozen with the embeddings, keeps no input either. With (reentrant)
    checkpointing transformers makes the embeddings' output require grad, so the frozen blocks
    are checkpointed and recomputed too. Exact in fp32 and bf16; under autocast an approximation.

    ``autocast``: mixed precision (fp32 weights, ``dtype`` = the autocast dtype). Derived for the
    Llama family without attention dropout: the residual stream and the norms stay fp32, every
    linear keeps its own 16-bit cast of its input (q, k and v: three copies), RoPE's fp32 tables
    promote q and k to fp32 and attention keeps 16-bit casts of them. The 16-bit copies of the
    weights are not activations here: :func:`training_memory` counts them with the weights. For
    GPT-2, BLOOM and attention dropout the pure 16-bit derivation is used (an approximation).
    """
    s = shape_of(config)
    b, q = _positive("batch", batch), _positive("sequence length", seq)
    _check_attention(s, attention)
    _check_choice("device", device, DEVICES)
    _activation_dtype(dtype)
    if not 0 <= trainable_from_layer <= s.layers:
        raise LabkitError(
            f"frozen layers must be between 0 and {s.layers}, got {trainable_from_layer}"
        )
    dt = DTYPE_BYTES[dtype]
    st = _Step(s, b, q, dt, attention, device, dropout, checkpointing)
    fp32 = dt == 4
    T = b * q  # tokens
    h, a, kv, d, i = s.hidden, s.heads, s.kv_heads, s.head_dim, s.intermediate
    p_on, mask_b = st.p_on, st.mask_b

    # --- one block --------------------------------------------------------------------------
    blk: dict[str, int] = {}
    # the layer input as saved by the first norm (RMSNorm: fp32 copy; LayerNorm: as is)
    llama = s.family == "llama"
    if llama:
        norm = {"input": T * h * 4, "stats": T * 4, "normed": T * h * dt, "output": T * h * dt}
    else:  # LayerNorm mean and rstd: fp32 on CUDA, the input dtype on CPU
        stat_b = 4 if device == "cuda" else dt
        norm = {"input": T * h * dt, "stats": 2 * T * stat_b, "output": T * h * dt}
    for k, v in norm.items():
        blk[f"norm1.{k}"] = v
    ad = a * d
    s2 = b * a * q * q
    math_path = st.math_path  # on CPU, SDPA with dropout: the eager ops, upcast to fp32
    if attention == "eager" or math_path:
        qb = 4 if math_path else dt
        blk["attn.q"] = blk["attn.k"] = blk["attn.v"] = T * ad * qb  # k, v repeated to a heads
        soft32 = s.family != "gpt2" or math_path  # GPT-2's eager softmax stays in the input dtype
        blk["attn.softmax"] = s2 * (4 if soft32 else dt)
        if p_on(s.attn_dropout):
            blk["attn.dropout_mask"] = s2 * (4 if math_path else mask_b)
            blk["attn.probs"] = s2 * qb
        elif soft32 and not fp32:
            blk["attn.probs"] = s2 * dt  # the 16-bit copy of the fp32 softmax
        blk["attn.out"] = T * ad * dt
    else:
        blk["attn.q"], blk["attn.out"] = T * ad * dt, T * ad * dt
        blk["attn.k"] = blk["attn.v"] = T * kv * d * dt
        blk["attn.logsumexp"] = b * a * q * 4
    if p_on(s.resid_dropout):
        blk["attn.resid_dropout_mask"] = T * h * mask_b
    for k, v in norm.items():
        blk[f"norm2.{k}"] = v
    if s.activation == "gelu_new":
        mlp = 5  # x, tanh(.), 1 + tanh(.), 0.5·x, product
    elif s.family == "llama":
        mlp = 4  # gate, up, silu(gate), silu(gate)·up
    else:
        mlp = 2  # input and output of a fused GeLU
    blk["mlp"] = mlp * T * i * dt
    if p_on(s.resid_dropout):
        blk["mlp.resid_dropout_mask"] = T * h * mask_b
    if buffer := _fused_qkv_buffer(st):  # GPT-2 and BLOOM compute q, k, v in one projection
        blk["attn.fused_qkv_buffer"] = buffer
    mixed = autocast and llama and not p_on(s.attn_dropout) and not fp32
    if mixed:
        blk = _autocast_llama_block(s, b, q, dt, attention)
    per_layer = sum(blk.values())

    # --- outside the blocks -----------------------------------------------------------------
    items: dict[str, int] = {}
    n_train = s.layers - trainable_from_layer
    first_trainable = trainable_from_layer == 0
    # with reentrant checkpointing transformers makes the embeddings' output require grad
    # (enable_input_require_grads), so the stream carries a gradient through frozen blocks too
    stream_grad = first_trainable or checkpointing
    if first_trainable:  # the embedding weights' gradients need the ids
        items["input_ids"] = T * 8
        if s.family == "gpt2":
            items["position_ids"] = q * 8
    items.update(_entry_items(st, stream_grad))
    if llama and (n_train or checkpointing):
        items["rope.cos_sin"] = 2 * q * d * (4 if mixed else dt)  # shared by all layers
    final = dict(norm)
    if mixed:  # fp32 input, rsqrt, fp32 normalised value; the head keeps a 16-bit input cast
        final = {"input": T * h * 4, "stats": T * 4, "normed": T * h * 4, "head_input": T * h * dt}
    if s.tied and not first_trainable:  # the head's weight is the frozen embedding matrix:
        final.pop("head_input" if mixed else "output")  # it keeps no input for a gradient
    if llama and not stream_grad and not n_train:  # all blocks frozen: no gradient reaches
        del final["input"], final["stats"]  # the final RMSNorm's input, only its weight's
    items.update({f"final_norm.{k}": v for k, v in final.items()})
    logits = _loss_bytes(s, b, q)

    recompute = 0
    if checkpointing:  # every block is checkpointed and, with a gradient stream, recomputed
        items["layer_inputs"] = s.layers * T * h * (4 if mixed else dt)
        # the recomputed block re-saves everything except its input when the norm saves the
        # input tensor itself (LayerNorm, or RMSNorm in fp32)
        keeps_input = not llama or fp32 or mixed
        layer_input = T * h * 4 if mixed else blk["norm1.input"]
        recompute = per_layer - (layer_input if keeps_input else 0)
        if not n_train and not mixed:  # only frozen blocks are recomputed: they keep what the
            # stream's gradient needs, as a LoRA block without adapters does
            frozen_block = _lora_llama_block if llama else _lora_layernorm_block
            recompute = sum(frozen_block(st, True)[0].values()) - (T * h * dt if keeps_input else 0)
        if llama:
            recompute += items.pop("rope.cos_sin")
    else:
        items["layers"] = n_train * per_layer
        if llama and n_train and not stream_grad:
            # the first trainable block's input carries no gradient: its RMSNorm keeps only the
            # normalised value (for the weight's gradient), not what the input's gradient needs
            items["layers"] -= st.norm()
    items["recompute_one_layer"] = recompute
    acts = sum(items.values())
    return Activations(
        acts, logits, per_layer, recompute, {**items, **{f"block.{k}": v for k, v in blk.items()}}
    )


def _autocast_llama_block(s: Shape, b: int, q: int, dt: int, attention: str) -> dict[str, int]:
    """One Llama-family block under autocast (see :func:`activation_bytes`), no dropout."""
    T = b * q
    h, a, kv, d, i = s.hidden, s.heads, s.kv_heads, s.head_dim, s.intermediate
    ad, s2 = a * d, b * a * q * q
    norm = T * h * 4 + T * 4 + T * h * 4  # fp32 input (the stream), rsqrt, normalised value
    blk = {"norm1": norm, "qkv.input_casts": 3 * T * h * dt}
    if attention == "sdpa":  # 16-bit casts of the fp32 q, k after RoPE; v, output, logsumexp
        blk["attn.q"] = blk["attn.out"] = T * ad * dt
        blk["attn.k"] = blk["attn.v"] = T * kv * d * dt
        blk["attn.logsumexp"] = b * a * q * 4
        blk["attn.o_input"] = 0  # a view of the kernel's output
    else:  # both matmuls cast their inputs: q, k (repeated), fp32 softmax, probs, v
        blk["attn.q"] = blk["attn.k"] = blk["attn.v"] = T * ad * dt
        blk["attn.softmax"] = s2 * 4
        blk["attn.probs"] = s2 * dt
        blk["attn.o_input"] = T * ad * dt
    blk["norm2"] = norm
    blk["gate_up.input_casts"] = 2 * T * h * dt
    blk["mlp"] = 4 * T * i * dt  # gate, up, silu(gate), the product (down's input)
    return blk


#: What an adapter can target in a GPT-2 or BLOOM block, by role: the fused q/k/v projection, the
#: attention output, the MLP's up and down projections (GPT-2 names both outputs ``c_proj``).
_LAYERNORM_ROLES = {
    "gpt2": ("c_attn", "c_proj", "c_fc", "c_proj"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}


@dataclass(frozen=True)
class _Step:
    """Sizes and switches of one training step, shared by the derivations. The adapter fields
    default to none: a LoRA block without adapters is a frozen block."""

    s: Shape
    b: int
    q: int
    dt: int  # bytes per activation element
    attention: str
    device: str
    dropout: bool
    checkpointing: bool
    adapted: frozenset[str] = frozenset()  # module names with an adapter ("q_proj", "c_attn", ...)
    r: int = 0
    adt: int = 4  # bytes per adapter element
    cast: bool = False  # the adapters compute in another dtype than the base

    @property
    def tokens(self) -> int:
        return self.b * self.q

    def p_on(self, prob: float) -> bool:
        return self.dropout and prob > 0

    @property
    def math_path(self) -> bool:
        """On CPU, SDPA with dropout runs PyTorch's math kernel: the eager ops, upcast to fp32."""
        return self.attention == "sdpa" and self.device == "cpu" and self.p_on(self.s.attn_dropout)

    @property
    def mask_b(self) -> int:
        """Bytes per dropout-mask element: the activation dtype on CPU, 1 on CUDA."""
        return self.dt if self.device == "cpu" else 1

    def dropout_mask(self, prob: float, width: int) -> int:
        """The mask of a dropout on a b·s·``width`` tensor (kept when its input needs a gradient)."""
        return self.tokens * width * self.mask_b if self.p_on(prob) else 0

    def inputs(self, n: int, width: int) -> int:
        """The input ``n`` adapters on one tensor keep: that tensor, or one cast copy each."""
        if not n:
            return 0
        return n * self.tokens * width * self.adt if self.cast else self.tokens * width * self.dt

    def outputs(self, n: int) -> int:
        """The rank-r outputs of ``n`` adapters (lora_B keeps its input)."""
        return n * self.tokens * self.r * self.adt

    def norm(self) -> int:
        """What a norm with a frozen weight keeps for its input's gradient. RMSNorm: the fp32
        input and the rsqrt; LayerNorm: the input, mean and rstd (fp32 on CUDA, the input dtype
        on CPU)."""
        T, h = self.tokens, self.s.hidden
        if self.s.family == "llama":
            return T * h * 4 + T * 4
        return T * h * self.dt + 2 * T * (4 if self.device == "cuda" else self.dt)


def _lora_attention(st: _Step, qg: bool, kg: bool, vg: bool, o_adapted: bool) -> dict[str, int]:
    """What attention keeps when q, k, v need a gradient (``qg``, ``kg``, ``vg``), and the input of
    an adapter on its output projection (``o_adapted``)."""
    s, b, q, T, dt = st.s, st.b, st.q, st.tokens, st.dt
    ad, kvd, s2 = s.heads * s.head_dim, s.kv_heads * s.head_dim, b * s.heads * q * q
    attn_drop = st.p_on(s.attn_dropout)
    kept = qg or kg or vg
    out: dict[str, int] = {}
    if st.attention == "sdpa" and not st.math_path:
        if kept:  # the SDPA kernel keeps all of them
            out["attn.q"] = out["attn.out"] = T * ad * dt
            out["attn.k"] = out["attn.v"] = T * kvd * dt
            out["attn.logsumexp"] = b * s.heads * q * 4
        # the output projection's input is a view of the kernel's output, a new tensor only when
        # the kernel kept nothing (no gradient reached q, k, v) or when the adapter casts it
        o_in = T * ad * (st.adt if st.cast else 0 if kept else dt)
    else:
        qb = 4 if st.math_path else dt
        # GPT-2's eager softmax stays in the input dtype, the others' (and the math kernel's) fp32
        soft_b = dt if s.family == "gpt2" and not st.math_path else 4
        scores = qg or kg
        out["attn.q"] = T * ad * qb if kg else 0  # q @ k^T keeps q for k's gradient
        out["attn.k"] = T * ad * qb if qg else 0
        out["attn.softmax"] = s2 * soft_b if scores else 0
        if attn_drop and scores:
            out["attn.dropout_mask"] = s2 * (4 if st.math_path else st.mask_b)
        # probs @ v keeps the probabilities for v's gradient: the softmax output itself without
        # dropout or cast (already counted when the scores need a gradient), else a new tensor
        probs_copy = attn_drop or soft_b != qb
        if vg and (probs_copy or not scores):
            out["attn.probs"] = s2 * (qb if probs_copy else soft_b)
        out["attn.v"] = T * ad * qb if scores else 0
        o_in = T * ad * (st.adt if st.cast else dt)
    buffer = _fused_qkv_buffer(st) if kept else 0
    if buffer:
        out["attn.fused_qkv_buffer"] = buffer
    out["lora.o_input"] = o_in if o_adapted else 0
    return out


def _fused_qkv_views(st: _Step) -> int:
    """How many of q, k, v attention keeps as views of GPT-2's or BLOOM's fused b·s·3h q/k/v
    projection; the others it keeps as copies. Without checkpointing, transformers keeps its KV
    cache on in training, and the cache's concatenation copies k and v."""
    cache = not st.checkpointing
    if st.attention == "sdpa" and not st.math_path:  # the kernel keeps q, k, v as they come
        return 1 if cache else 3
    if st.math_path:  # the math kernel scales q and k (copies) and upcasts a 16-bit v
        return 1 if not cache and st.b == 1 and st.dt == 4 else 0
    # eager: the batched matmuls reshape (b, a, s, d) to (b·a, s, d), a view only when b == 1
    return (1 if cache else 3) if st.b == 1 else 0


def _fused_qkv_buffer(st: _Step) -> int:
    """What GPT-2's or BLOOM's fused q/k/v projection adds beyond q, k, v counted on their own:
    a saved view keeps the whole b·s·3h buffer alive, standing in for the views' b·s·h each."""
    views = _fused_qkv_views(st) if st.s.family != "llama" else 0
    return (3 - views) * st.tokens * st.s.hidden * st.dt if views else 0


def _entry_items(st: _Step, stream_grad: bool) -> dict[str, int]:
    """Kept outside the blocks when the stream carries a gradient from the embeddings on (GPT-2's
    embedding dropout mask, BLOOM's embedding LayerNorm) and, with checkpointing, GPT-2's eager
    causal mask: a b·s² positional input of each checkpointed block, which reentrant
    checkpointing saves."""
    s = st.s
    items: dict[str, int] = {}
    if stream_grad and s.family == "gpt2":
        items["embedding.dropout_mask"] = st.dropout_mask(s.embd_dropout, s.hidden)
    if stream_grad and s.family == "bloom":  # word_embeddings_layernorm: input, mean, rstd
        items["embedding_norm"] = st.norm()
    if st.checkpointing and s.family == "gpt2" and st.attention == "eager":
        items["causal_mask"] = st.b * st.q * st.q * st.dt
    return {k: v for k, v in items.items() if v}


def _lora_llama_block(st: _Step, g: bool) -> tuple[dict[str, int], bool, bool]:
    """One Llama-family block entered with (``g``) or without a gradient-carrying stream: its
    items, whether RoPE's tables are kept, whether its output carries a gradient."""
    T, h, i, dt = st.tokens, st.s.hidden, st.s.intermediate, st.dt
    adapted = st.adapted
    attn_mods = adapted & {"q_proj", "k_proj", "v_proj", "o_proj"}
    blk: dict[str, int] = {"norm1": st.norm() if g else 0}
    blk["lora.attn_inputs"] = st.inputs(len(adapted & {"q_proj", "k_proj", "v_proj"}), h)
    qg, kg, vg = (g or f"{x}_proj" in adapted for x in "qkv")
    blk.update(_lora_attention(st, qg, kg, vg, "o_proj" in adapted))
    blk["lora.attn_outputs"] = st.outputs(len(attn_mods))
    g2 = g or bool(attn_mods)
    blk["norm2"] = st.norm() if g2 else 0
    blk["lora.mlp_inputs"] = st.inputs(len(adapted & {"gate_proj", "up_proj"}), h)
    gg, ug = g2 or "gate_proj" in adapted, g2 or "up_proj" in adapted
    blk["mlp.gate"] = T * i * dt if gg else 0  # silu's input, and up's partner in the product
    blk["mlp.silu"] = T * i * dt if ug else 0
    blk["mlp.up"] = T * i * dt if gg else 0
    blk["lora.down_input"] = T * i * (st.adt if st.cast else dt) if "down_proj" in adapted else 0
    blk["lora.mlp_outputs"] = st.outputs(len(adapted & {"gate_proj", "up_proj", "down_proj"}))
    return blk, qg or kg, g2 or bool(adapted)


def _lora_layernorm_block(st: _Step, g: bool) -> tuple[dict[str, int], bool, bool]:
    """One GPT-2 or BLOOM block entered with (``g``) or without a gradient-carrying stream: its
    items, False (no RoPE), whether its output carries a gradient."""
    s, T, h, i = st.s, st.tokens, st.s.hidden, st.s.intermediate
    qkv, o, up, down = (name in st.adapted for name in _LAYERNORM_ROLES[s.family])
    blk: dict[str, int] = {"norm1": st.norm() if g else 0}
    blk["lora.qkv_input"] = st.inputs(qkv, h)
    attn_g = g or qkv  # q, k and v come from one projection: all or none need a gradient
    blk.update(_lora_attention(st, attn_g, attn_g, attn_g, o))
    attn_g = attn_g or o
    blk["attn.resid_dropout_mask"] = st.dropout_mask(s.resid_dropout, h) if attn_g else 0
    g2 = g or attn_g
    blk["norm2"] = st.norm() if g2 else 0
    blk["lora.up_input"] = st.inputs(up, h)
    act_g = g2 or up
    # GPT-2's gelu_new, written in Python, keeps x, tanh(.), 1 + tanh(.) and 0.5·x; BLOOM's GeLU
    # (an autograd Function) and torch's own activations keep one tensor
    n_act = 4 if s.activation == "gelu_new" else 1
    blk["mlp.act"] = n_act * T * i * st.dt if act_g else 0
    blk["lora.down_input"] = st.inputs(down, i)  # the activation's output (or its cast copy)
    mlp_g = act_g or down
    blk["mlp.resid_dropout_mask"] = st.dropout_mask(s.resid_dropout, h) if mlp_g else 0
    blk["lora.outputs"] = st.outputs(qkv + o + up + down)
    return blk, False, g2 or mlp_g


def lora_activation_bytes(
    config: Any,
    batch: int,
    seq: int,
    targets: Any = "default",
    r: int = 8,
    dtype: str = "bf16",
    adapter_dtype: str = "fp32",
    attention: str = "sdpa",
    checkpointing: bool = False,
    dropout: bool = True,
    device: str = "cuda",
) -> Activations:
    """Bytes autograd keeps for backward in a LoRA step (frozen base, ``lora_dropout=0``).

    Every family (Llama, Mistral, Qwen2, GPT-2, BLOOM), any targets. A frozen op saves only what
    the gradient of an input that requires grad needs: a frozen linear keeps nothing (its weight
    is a parameter), a frozen norm weight no normalised value, and before the first adapted module
    nothing at all (the embeddings are frozen). Kept in every family: each adapter's input (one
    shared tensor when the adapter computes in the base dtype, one cast copy per adapter
    otherwise: peft 0.21 keeps adapters in fp32 under a 16-bit base) and its rank-r output;
    attention's q, k, v, output and logsumexp (SDPA) or what each eager matmul/softmax needs
    (on CPU, SDPA with dropout runs the math kernel: fp32 copies and the s² terms); dropout masks
    where a gradient flows (the activation dtype on CPU, 1 byte on CUDA); the loss as in full
    fine-tuning. Per family:

    - Llama, Mistral, Qwen2: the RMSNorms' fp32 input and rsqrt, RoPE's tables, the MLP's gate,
      up and silu(gate) as far as their gradients flow;
    - GPT-2, BLOOM: the LayerNorms' input, mean and rstd; the MLP activation's saved tensors
      (gelu_new: four b·s·i, BLOOM's GeLU: its input); q, k, v split from one fused projection,
      whose whole buffer a saved view keeps alive, and without checkpointing the KV cache's copies
      of k and v (transformers keeps the cache on in training); GPT-2's eager causal mask is a
      checkpointed block's input. BLOOM has eager attention only.

    With checkpointing, the layer inputs are kept, and transformers makes the embeddings' output
    require grad (``enable_input_require_grads``), so the block recomputed during backward is a
    block whose stream carries a gradient (RoPE's tables, GPT-2's embedding dropout mask and
    BLOOM's embedding LayerNorm included).
    """
    s = shape_of(config)
    b, q = _positive("batch", batch), _positive("sequence length", seq)
    _positive("LoRA rank r", r)
    _check_attention(s, attention)
    _check_choice("device", device, DEVICES)
    _activation_dtype(dtype)
    _check_choice("adapter dtype", adapter_dtype, ("fp32", "bf16", "fp16"))
    st = _Step(
        s=s,
        b=b,
        q=q,
        r=r,
        adapted=frozenset(n.split(".")[-2] for n in lora_targets(s, targets)),
        dt=DTYPE_BYTES[dtype],
        adt=DTYPE_BYTES[adapter_dtype],
        cast=_DTYPE_NAMES.get(adapter_dtype) != _DTYPE_NAMES.get(dtype),
        attention=attention,
        device=device,
        dropout=dropout,
        checkpointing=checkpointing,
    )
    block = _lora_llama_block if s.family == "llama" else _lora_layernorm_block
    T, h = st.tokens, s.hidden
    items: dict[str, int] = {}
    rope_b = 2 * q * s.head_dim * st.dt  # cos and sin, shared by all layers
    recompute = 0
    if checkpointing:
        blk, _, _ = block(st, True)
        per_layer = sum(blk.values())
        items["layer_inputs"] = s.layers * T * h * st.dt
        # the recomputed block re-saves all but its input, which a LayerNorm (or an fp32 RMSNorm)
        # keeps as is
        keeps_input = s.family != "llama" or st.dt == 4
        recompute = per_layer - (T * h * st.dt if keeps_input else 0)
        if s.family == "llama":
            recompute += rope_b
        items.update(_entry_items(st, stream_grad=True))
    else:
        g, rope, per_layer = False, False, 0
        for _ in range(s.layers):
            blk, uses_rope, g = block(st, g)
            rope |= uses_rope
            for k, v in blk.items():
                items[f"layers.{k}"] = items.get(f"layers.{k}", 0) + v
            per_layer = max(per_layer, sum(blk.values()))
        if rope:
            items["rope.cos_sin"] = rope_b
    items["final_norm"] = st.norm()
    items["recompute_one_layer"] = recompute
    items = {k: v for k, v in items.items() if v}
    logits = _loss_bytes(s, b, q)
    return Activations(sum(items.values()), logits, per_layer, recompute, items)


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


def _trainable(s: Shape, method: str, r: int, targets: Any, frozen_layers: int) -> dict[str, tuple]:
    shapes = param_shapes(s)
    if method == "full":
        return shapes
    if method in {"lora", "qlora"}:
        out = {}
        for n in lora_targets(s, targets):
            d_in, d_out = _linear_dims(n, shapes[n], s.family)
            out[n + ".lora_A"], out[n + ".lora_B"] = (r, d_in), (d_out, r)
        return out
    # frozen: embeddings (and with them a tied head) and the first k blocks are frozen
    emb = {"model.embed_tokens.weight", "transformer.wte.weight", "transformer.wpe.weight"}
    emb |= {"transformer.word_embeddings.weight"}
    emb |= {n for n in shapes if "word_embeddings_layernorm" in n}
    frozen = re.compile(rf"\.(h|layers)\.({'|'.join(str(k) for k in range(frozen_layers))})\.")
    return {
        n: shp
        for n, shp in shapes.items()
        if n not in emb and not (frozen_layers and frozen.search(n))
    }


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
    per_block: dict[str, int] = {}
    for name, shp in trainable.items():
        if _is_linear(name, s.family):
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
    _check_choice("optimizer", optimizer, OPTIMIZERS)
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
    """
    s = shape_of(config)
    _check_choice("method", method, METHODS)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _positive("gradient accumulation steps", grad_accum)
    if method == "qlora" and precision == "fp32":
        raise LabkitError(
            "QLoRA computes in 16-bit; use --precision bf16-mixed, fp16-mixed or bf16"
        )
    if method != "frozen" and frozen_layers:
        raise LabkitError("--frozen-layers needs --method frozen")
    if not 0 <= frozen_layers <= s.layers:
        raise LabkitError(f"frozen layers must be between 0 and {s.layers}, got {frozen_layers}")
    if method in {"lora", "qlora"}:
        _positive("LoRA rank r", lora_r)
    P = count_parameters(s)
    trainable = _trainable(s, method, lora_r, lora_targets, frozen_layers)
    n_train = sum(math.prod(x) for x in trainable.values())
    mixed = precision.endswith("-mixed")
    act_dtype = "fp32" if precision == "fp32" else precision[:4]
    half = 2
    if method in {"full", "frozen"}:
        w_dtype = "fp32" if precision == "fp32" or mixed else "bf16"
        weights = weight_bytes(s, w_dtype)
        master = 0
        if mixed:  # the 16-bit copies autocast keeps of the weights it casts
            # autocast caches the casts of trainable weights for its whole region: all at once
            master = autocast_cast_parameters(s, trainable) * half
        weights += master
        grad_b = 4 if precision == "fp32" or mixed else 2
        state_b = grad_b
    else:
        # LoRA under autocast keeps the frozen base in fp32; pure bf16 keeps it in bf16
        base = "nf4" if method == "qlora" else ("fp32" if precision == "fp32" or mixed else "bf16")
        ab = (
            4
            if precision == "fp32"
            else DTYPE_BYTES[
                _check_choice("adapter dtype", adapter_dtype, ("fp32", "bf16", "fp16"))
            ]
        )
        weights = weight_bytes(s, base) + n_train * ab
        if method == "lora" and mixed:  # autocast's 16-bit copies of the frozen fp32 linears,
            # kept by each matmul for its input's gradient (not cached: they need no gradient,
            # so with checkpointing only the recomputed block's copies exist)
            weights += autocast_cast_parameters(s, param_shapes(s), checkpointing) * half
        grad_b = state_b = ab
    gradients = n_train * grad_b
    opt = optimizer_bytes(trainable, optimizer, state_b)
    if method in {"lora", "qlora"}:
        adapter_act = "fp32" if precision == "fp32" else adapter_dtype
        acts = lora_activation_bytes(
            s, batch, seq, lora_targets, lora_r, act_dtype, adapter_act, attention,
            checkpointing, dropout, device,
        )  # fmt: skip
    else:
        acts = activation_bytes(
            s,
            batch,
            seq,
            act_dtype,
            attention,
            checkpointing,
            dropout,
            device,
            frozen_layers if method == "frozen" else 0,
            autocast=mixed,
        )
    activations = acts.activations
    T = batch * seq
    transient = T * s.vocab * (DTYPE_BYTES[act_dtype] + 4)
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
        "activation_items": acts.items,
    }
    return Breakdown(
        P,
        n_train,
        weights,
        gradients,
        opt,
        activations,
        acts.logits,
        0,
        transient,
        total,
        1,
        details,
    )


# ----------------------------------------------------------------------------- inference
def kv_cache_bytes(config: Any, batch: int, context: int, dtype: str = "bf16") -> int:
    """KV cache: 2 · L · n_kv · d · s · b · bytes (GQA-aware: n_kv key/value heads)."""
    s = shape_of(config)
    _positive("batch", batch)
    _positive("context length", context)
    if dtype not in DTYPE_BYTES:
        raise LabkitError(f"unknown KV-cache dtype {dtype!r}; accepted: fp32, bf16, fp16, int8")
    return 2 * s.layers * s.kv_heads * s.head_dim * context * batch * DTYPE_BYTES[dtype]


def inference_memory(
    config: Any,
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 2048,
    kv_dtype: str | None = None,
    double_quant: bool = True,
) -> Breakdown:
    """Inference memory: weights (any dtype incl. int8 and NF4 with its quant-state) + KV cache
    for ``context`` tokens + the logits of one step (b·V fp32 for sampling, plus the prompt's
    last-position logits in the compute dtype)."""
    s = shape_of(config)
    weights = weight_bytes(s, dtype, double_quant)
    kv_dtype = kv_dtype or ("bf16" if dtype in {"int8", "nf4"} else dtype)
    kv = kv_cache_bytes(s, batch, context, kv_dtype)
    logits = batch * s.vocab * (4 + DTYPE_BYTES[kv_dtype])
    P = count_parameters(s)
    total = weights + kv + logits
    return Breakdown(
        P, 0, weights, 0, 0, 0, logits, kv, 0, total, 1, {"dtype": dtype, "context": context}
    )


# ----------------------------------------------------------------------------- sharding
def sharded(b: Breakdown, n_gpus: int, strategy: str = "ddp") -> Breakdown:
    """Per-GPU memory under data parallelism over ``n_gpus``.

    DDP replicates everything; ZeRO-1 shards the optimizer state, ZeRO-2 also the gradients,
    ZeRO-3 / FSDP full shard also the weights (plus one gathered block in flight, ignored here).
    Activations are per GPU (each GPU runs its own micro-batch) and never sharded.
    """
    _positive("number of GPUs", n_gpus)
    _check_choice("strategy", strategy, STRATEGIES)
    level = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[strategy]
    opt = math.ceil(b.optimizer / n_gpus) if level >= 1 else b.optimizer
    grads = math.ceil(b.gradients / n_gpus) if level >= 2 else b.gradients
    weights = math.ceil(b.weights / n_gpus) if level >= 3 else b.weights
    total = weights + grads + opt + b.activations + b.logits + b.kv_cache + b.transient
    details = {**b.details, "strategy": strategy, "n_gpus": n_gpus}
    return Breakdown(
        b.parameters,
        b.trainable_parameters,
        weights,
        grads,
        opt,
        b.activations,
        b.logits,
        b.kv_cache,
        b.transient,
        total,
        n_gpus,
        details,
    )


def round_to_nodes(n_gpus: int, per_node: int = 8) -> int:
    """GPUs come in nodes of 8: up to one node any count works, beyond it whole nodes (17 → 24)."""
    _positive("number of GPUs", n_gpus)
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
    _positive("number of GPUs", n_gpus)
    if flops_per_gpu <= 0 or parameters <= 0 or tokens <= 0:
        raise LabkitError("parameters, tokens and FLOP/s per GPU must be positive")
    return training_flops(parameters, tokens, recompute) / (n_gpus * flops_per_gpu) / 86400


# ----------------------------------------------------------------------------- rules of thumb
def rule_weights(parameters: float, dtype: str = "fp16") -> float:
    """The seed's "a 6B model in fp16 is 12 GB": P × bytes per parameter."""
    return parameters * DTYPE_BYTES[dtype]


def rule_training_8x(parameters: float) -> float:
    """The seed's "training needs at least 8× the fp16 weights" (16 B/param)."""
    return 8 * rule_weights(parameters, "fp16")


def rule_training_12(parameters: float) -> float:
    """The seed's "1B params: 2 GB weights + 2 GB grads + 8 GB AdamW" (12 B/param)."""
    return 12 * parameters


def rule_inference_2x(parameters: float, dtype: str = "fp16") -> float:
    """The seed's "inference ≈ 2× the weights"."""
    return 2 * rule_weights(parameters, dtype)


def rule_activations_korthikanti(
    layers: int, hidden: int, heads: int, seq: int, batch: int
) -> float:
    """Korthikanti et al.: L · s·b·h·(34 + 5·a·s/h) bytes (16-bit, GPT block, no flash)."""
    return layers * seq * batch * hidden * (34 + 5 * heads * seq / hidden)
