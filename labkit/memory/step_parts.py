"""The sizes a training step's moments are built from (:mod:`labkit.memory.peak`): the
estimator's components (weights, gradients, optimizer state, saved activations) split by where in
the step they are alive, and what the live-tensor trace (:mod:`labkit.memory.trace`) shows each
phase holds beyond them: the optimizer's temporaries per implementation, the KV cache the model
output holds, a LoRA dropout's copies, the inputs every checkpointed block is handed, a block's
widest backward moment, autocast's weight copies.

Every size is for a CPU step of torch 2.13, transformers 5.25, peft 0.21, bitsandbytes 0.50, as
the tests measure it; :func:`parts` reads them for one job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from labkit.dtypes import DTYPE_BYTES
from labkit.memory import estimator
from labkit.memory.job import Breakdown
from labkit.memory.trace import CATEGORIES  # the trace's categories: one list, re-exported
from labkit.models import architecture, targets


@dataclass
class Moment:
    """One moment of a step (``peak`` lists them, ``lever_peak`` rewrites them): its phase, what
    happens, and the bytes alive by category."""

    phase: str
    label: str
    alive: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.alive.values())


@dataclass
class Parts:
    """The sizes the moments are built from (bytes)."""

    weights: int  # as stored, buffers and quant-state included
    copies: int  # autocast's cached 16-bit copies of weights (forward to backward)
    copies_early: int  # the copies alive at the loss and head backward
    copies_block: int  # the copies alive in a block's backward (top; none left at the bottom
    # without checkpointing, a recomputed block's own with it)
    grads: int
    state: int
    inputs: int  # token ids of every micro-batch
    saved: int  # what forward + loss keep for backward, the ids excluded
    nll_saved: int  # the part the loss' nll keeps (labels, total weight): freed first
    lsm: int  # the saved fp32 log-softmax (b·s·V)
    logits: int  # the head's output
    loss_temp: int  # what only the loss computation holds (padded labels, the fp32 logits)
    head_in: int  # the gradient reaching the head (b·s·V in the activation dtype)
    cache: int  # the KV cache the output holds (alive to the end of backward when held)
    cache_extra: int  # the part of it autograd does not save (alive from the forward on)
    hidden: int  # the final hidden state a frozen head keeps no copy of (alive in forward)
    fwd_extra: int  # what every checkpointed block is handed and nothing saves (BLOOM's mask)
    stream: int  # the gradient of the residual stream (b·s·h)
    end: int  # the last backward moment's own temporaries (embedding gradient, stream)
    end_later: int  # the same in a later micro-batch (the new gradient is a temporary)
    layers: int
    block_saved: int  # what one block keeps (no checkpointing)
    entry_saved: int  # kept below the first block (RoPE tables, embedding masks)
    layer_input: int  # one checkpointed block's input
    recompute: int  # a checkpointed block's re-saved bytes
    block_temp: int  # the widest moment of a block's backward beyond its saved bytes
    g_head: int  # gradients of the head and final norm (made first)
    g_head_weight: int  # the head matrix's alone
    tied_head: int  # a tied head's gradient, alive from the head to the end as a temporary
    head_saved: int  # what the final norm and the head keep (freed before the top block)
    g_emb: int  # gradients of the embeddings (made last)
    g_first: int  # gradients of block 0
    g_down: int  # one block's down projection gradient (made inside its backward)
    opt_temp: int
    grad_b: int = 4
    top_checkpointed: bool = True  # the top block is checkpointed (every n-th layer)
    norm_temp: int = 0  # the final norm's backward temporaries (Llama family; chunked loss)
    norm_out: int = 0  # what is freed before the final norm's backward (its output, ...)
    norm_after_head: bool = False  # the head's backward (and its 16-bit weight copy) came first
    head_copy: int = 0  # autocast's copy of the head (freed by its backward; none checkpointed)
    #: LoRA checkpointed under autocast: the copies at the final norm and in the bottom block's
    #: backward (None: as the other jobs, ``copies_block`` or none)
    copies_norm: int | None = None
    copies_bottom: int | None = None

    def at(self, **alive: int) -> dict[str, int]:
        return {k: alive.get(k, 0) for k in CATEGORIES}


def _opt_temporaries(
    shapes: dict[str, tuple[int, ...]], optimizer: str, impl: str, state_b: int
) -> int:
    """The bytes an optimizer step holds beyond weights, gradients and state (CPU, torch 2.13,
    transformers' Adafactor, bitsandbytes 0.50), in parameter order.

    AdamW single-tensor: ``denom = exp_avg_sq.sqrt() / bc`` makes two tensors of the parameter's
    size while the previous parameter's ``denom`` is still bound; foreach: ``_foreach_sqrt`` of
    every state at once (one copy of the trainable parameters); fused: nothing. SGD (with or
    without momentum) updates in place. Adafactor: ``grad**2 + eps`` (two), the factored
    update (row and column factors) and ``-update``; a 16-bit parameter adds fp32 copies of the
    gradient and the parameter. bitsandbytes' 8-bit AdamW updates in its kernel.
    """
    sizes = [math.prod(s) for s in shapes.values()]
    if not sizes or optimizer in {"sgd", "sgd-nomomentum", "adamw8bit"}:
        return 0
    if optimizer == "adamw":
        if impl == "fused":
            return 0
        if impl == "foreach":
            return sum(sizes) * state_b
        prev = [0, *sizes[:-1]]
        return max(2 * n + p for n, p in zip(sizes, prev, strict=True)) * state_b
    # adafactor (fp32 update)
    best = 0
    prev = 0
    for shp, n in zip(shapes.values(), sizes, strict=True):
        factors = (math.prod(shp[:-1]) + shp[-1]) if len(shp) >= 2 else n
        extra = 2 * n if state_b == 2 else 0  # fp32 copies of a 16-bit gradient and parameter
        best = max(best, (2 * n + max(factors, prev) + extra) * 4)
        prev = n
    return best


def _param_order(config: Any, trainable: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    """``trainable`` in ``model.parameters()`` order (the optimizer's loop order)."""
    order = list(architecture.param_shapes(config))
    rank = {n: i for i, n in enumerate(order)}
    return dict(sorted(trainable.items(), key=lambda kv: rank.get(kv[0].split(".lora")[0], 0)))


def _buffers(config: Any, weight_b: int) -> int:
    """Bytes of the model's buffers: RoPE's ``inv_freq`` and ``original_inv_freq`` in the
    Llama family (d/2 values each, in the weights' dtype); any other model read on the meta
    device."""
    if estimator.is_formula_family(config):
        s = architecture.shape_of(config)
        return 2 * (s.head_dim // 2) * weight_b if s.family == "llama" else 0
    model = architecture.meta_model(config)
    return sum(b.numel() * min(b.element_size(), weight_b) for b in model.buffers())


#: What bitsandbytes 0.50 keeps per 4-bit matrix beyond codes and absmax constants (which
#: :func:`labkit.memory.estimator.nf4_bytes` counts): the 16-value NF4 code table and the
#: nested 256-value code table of double quantization (fp32) and the nested offset.
NF4_TENSOR_CONSTANTS = 16 * 4 + 256 * 4 + 4


def _cache(
    s: Any, job: dict[str, Any], act_b: int, fp32_autocast: bool, sliding: int = 0
) -> tuple[int, int]:
    """(bytes the KV cache holds, the part of it autograd does not save). transformers keeps the
    cache on in training unless checkpointing; attention saves its own inputs, and the cache's
    k and v are those inputs except: eager attention with GQA in the Llama family (it saves the
    repeated copies; with one KV head and one sequence the repeat is a view of the cache's own
    k, v); GPT-2 under SDPA (the CPU kernel saves its own copy of one of them in fp32,
    of both in 16 bit); the Llama family under autocast with fp32 weights, whose cached k is fp32
    (RoPE's fp32 tables promote it) while attention saves 16-bit casts. ``sliding``: layers with
    a sliding window, whose cache layer keeps an int64 scalar of its own."""
    if job["checkpointing"]:
        return 0, 0
    dtype = "fp32" if act_b == 4 else "bf16"
    cache = estimator.kv_cache_bytes(s, job["batch"], job["seq"], dtype)
    if not isinstance(s, architecture.Shape):
        return cache, 0
    scalars = 8 * sliding
    if s.family == "llama" and fp32_autocast:
        k32 = estimator.kv_cache_bytes(s, job["batch"], job["seq"], "fp32") // 2
        return k32 + cache // 2 + scalars, k32 + scalars
    unsaved = 0
    one_view = s.kv_heads == 1 and job["batch"] == 1  # the repeat is a view of the cache's k, v
    if s.family == "llama" and job["attention"] == "eager" and s.kv_heads != s.heads:
        unsaved = 0 if one_view else 2
    if s.family == "gpt2" and job["attention"] == "sdpa":
        unsaved = 1 if act_b == 4 else 2
    return cache + scalars, unsaved * cache // 2 + scalars


#: LoRA target names by where they read from in a block: the block's (normed) input, the
#: attention's output, the MLP's (normed) input, the MLP's activation.
_READS = {
    "x1": ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value"),
    "attn": ("o_proj", "attn.c_proj", "self_attention.dense"),
    "x2": ("gate_proj", "up_proj", "c_fc", "dense_h_to_4h"),
    "act": ("down_proj", "mlp.c_proj", "dense_4h_to_h"),
}


def reads(name: str) -> str:
    for where, names in _READS.items():
        if any(name.endswith(n) for n in names):
            return where
    return "act"


def _lora_dropout_bytes(s: Any, job: dict[str, Any], adt: int, cast: bool, first: bool) -> int:
    """What a LoRA dropout adds to one block's saved bytes (peft: ``lora_B(lora_A(dropout(x)))``,
    one dropout per adapted module). With it each adapter keeps its dropped input (lora_A's
    input) and, when that input needs a gradient, the dropout's mask (the input dtype on CPU,
    1 byte on CUDA); without it lora_A keeps the input itself: one shared tensor per input, or
    one cast copy per adapter. ``first``: block 0 without checkpointing, whose input carries no
    gradient (the embeddings are frozen)."""
    T = job["batch"] * job["seq"]
    mods = [m for m in targets.lora_modules(s, job["lora_targets"]) if _in_block0(m.name)]
    mask_b = adt if job["device"] == "cpu" else 1
    grad = {"x1": not first}
    adapted = {reads(m.name) for m in mods}
    grad["attn"] = grad["x1"] or "x1" in adapted
    grad["x2"] = grad["attn"] or "attn" in adapted
    grad["act"] = grad["x2"] or "x2" in adapted
    extra = 0
    for m in mods:
        where = reads(m.name)
        extra += T * m.d_in * (adt + (mask_b if grad[where] else 0))
        if cast:
            extra -= T * m.d_in * adt
    if not cast:  # the shared inputs lora_A kept
        extra -= sum(T * next(m.d_in for m in mods if reads(m.name) == w) * adt for w in adapted)
    return extra


def _in_block0(name: str) -> bool:
    block = _BLOCK.search(name)
    return bool(block) and block.group(2) == "0"


_BLOCK = re.compile(r"\.(h|layers)\.(\d+)\.")


def _grad_groups(table, trainable: dict[str, tuple[int, ...]], grad_b: int) -> dict[str, int]:
    """Gradient bytes by where backward makes them: the head and final norm first, then block by
    block (``block.K``), the embeddings last; ``down``: one block's widest gradient made inside
    its MLP (its down projection)."""
    emb = {f"{m.name}.weight" for m in table if m.kind == "embedding"}
    emb |= {n for n in trainable if "word_embeddings_layernorm" in n}
    out: dict[str, int] = {"head": 0, "head_weight": 0, "emb": 0}
    for name, shp in trainable.items():
        n = math.prod(shp) * grad_b
        block = _BLOCK.search(name)
        if block:
            key = f"block.{block.group(2)}"
            out[key] = out.get(key, 0) + n
            if re.search(r"(down_proj|c_proj|dense_4h_to_h|fc2|fc_out|w2)\.weight$", name) and (
                "mlp" in name or "dense_4h_to_h" in name
            ):
                out["down"] = max(out.get("down", 0), n)
        elif name in emb:
            out["emb"] += n
        else:
            out["head"] += n
            if name.endswith("lm_head.weight"):
                out["head_weight"] = n
    return out


def _block_temp(s: Any, T: int, act_b: int, full: bool) -> int:
    """The widest moment of a block's backward beyond its saved bytes, without the down
    projection's weight gradient: in the MLP's backward the gradient of the down projection's
    input and the two products' gradients (SwiGLU's gate·up, GPT-2's gelu_new) are made while
    the down projection's input, saved in full fine-tuning, is freed: 2 (3 under LoRA) b·s·i
    tensors; BLOOM's GeLU backward (its own autograd function) holds five."""
    if isinstance(s, architecture.Shape):
        width, family = s.intermediate, s.family
    else:
        c = architecture.transformers_config(s).get_text_config()
        width = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
        family = "llama"
    k = 5 if family == "bloom" else 2
    return (k + (0 if full else 1)) * T * width * act_b


def parts(config: Any, b: Breakdown, job: dict[str, Any]) -> Parts:
    """The sizes of :class:`Parts` from the estimator's breakdown and the job."""
    formula = estimator.is_formula_family(config)
    s = architecture.shape_of(config) if formula else config
    tj = job["tj"]  # the TrainingJob
    method = tj.method
    batch, seq, T = job["batch"], job["seq"], job["batch"] * job["seq"]
    layers, vocab = estimator.layers_and_vocab(s)
    mixed = tj.precision.mixed
    act_b = DTYPE_BYTES[tj.precision.compute]
    trainable = targets.trainable_shapes(
        s, method, r=job["lora_r"], targets=job["lora_targets"], frozen_layers=job["frozen_layers"]
    )
    n_train = sum(math.prod(x) for x in trainable.values())
    base = tj.weight_dtype  # the model's own weights (LoRA's base, NF4 for QLoRA)
    ab = DTYPE_BYTES[tj.adapters]
    stored = estimator.weight_bytes(s, base) + (n_train * ab if tj.lora else 0)
    buf_b = 2 if base == "nf4" else DTYPE_BYTES[base]
    copies = b.weights - stored
    if method == "qlora":
        stored += NF4_TENSOR_CONSTANTS * len(targets.block_linears(s))
    items = b.details["activation_items"]
    saved_total = b.activations + b.logits
    ids = items.get("input_ids", 0) if formula else (T * 8 if method == "full" else 0)
    recompute = items.get("recompute_one_layer", 0)
    saved = saved_total - recompute - ids
    grad_b = b.gradients // n_train if n_train else 4
    table = architecture.module_table(s)
    head = [m for m in table if m.name.endswith("lm_head")]
    tied = bool(head and head[0].tied)
    h = next(m for m in table if m.kind == "embedding").d_out
    groups = _grad_groups(table, _param_order(s, trainable), grad_b)
    full = method == "full"
    fp32_autocast = mixed and (method in {"full", "frozen"} or base == "fp32")
    sliding = 0
    if formula and getattr(s, "model_type", "") in {"mistral", "qwen2"}:  # a window may be set
        sliding = sum(1 for w in estimator.cache_windows(config) if w)
    cache, extra = _cache(s, job, act_b, fp32_autocast, sliding)
    head_frozen = not groups["head_weight"] and not (full and tied)
    stream_b = 4 if fp32_autocast else act_b  # the residual stream's (fp32 under autocast)
    hidden = T * h * stream_b if head_frozen or fp32_autocast else 0
    if job["lora_dropout"]:
        cast = ab != (2 if base in {"bf16", "fp16", "nf4"} else 4)
        adt = ab
        per_block = _lora_dropout_bytes(s, job, adt, cast, first=False)
        if job["checkpointing"]:
            recompute += per_block
        else:
            first = _lora_dropout_bytes(s, job, adt, cast, first=True)
            saved += first + (layers - 1) * per_block
    new_emb = vocab * h * grad_b  # a new embedding gradient, before it is added
    tied_head = new_emb if full and tied else 0  # a tied head's, a temporary to the end
    head_saved = sum(v for k, v in items.items() if k.startswith("final_norm"))
    entry = {k: v for k, v in items.items() if k.startswith(("rope.", "embedding")) and formula}
    layer_items = items.get("layers", 0) or sum(
        v for k, v in items.items() if k.startswith("layers.")
    )
    if not formula:
        layer_items = max(0, b.activations - recompute - ids)
    return Parts(
        weights=stored + _buffers(s, buf_b),
        copies=copies,
        **_backward_copies(s, copies, trainable, job, mixed),
        grads=b.gradients,
        state=0 if job["optimizer"] == "sgd-nomomentum" else b.optimizer,
        inputs=job["grad_accum"] * T * 8,
        saved=saved,
        nll_saved=((seq + 1) if batch == 1 else T) * 8 + 4,
        lsm=T * vocab * 4,
        logits=T * vocab * act_b,
        loss_temp=(batch * (seq + 1) * 8 if batch > 1 else 0)
        + (T * vocab * 4 if act_b != 4 else 0),
        head_in=T * vocab * act_b,
        cache=cache,
        cache_extra=extra,
        hidden=hidden,
        fwd_extra=_checkpoint_inputs(s, job, act_b, 4 if fp32_autocast else act_b),
        stream=T * h * act_b,
        end=(2 * new_emb if tied else T * h * stream_b) if full else 0,
        end_later=(3 * new_emb if tied else new_emb + T * h * stream_b) if full else 0,
        layers=layers,
        block_saved=layer_items // layers,
        entry_saved=sum(entry.values()),
        layer_input=items.get("layer_inputs", 0) // layers,
        recompute=recompute,
        block_temp=_block_temp(s, T, act_b, full or method == "frozen"),
        g_head=groups["head"],
        g_head_weight=groups["head_weight"] or tied_head,
        tied_head=tied_head,
        head_saved=head_saved,
        g_emb=groups["emb"],
        g_first=groups.get("block.0", 0),
        g_down=groups.get("down", 0),
        opt_temp=_opt_temporaries(
            _param_order(s, trainable), job["optimizer"], job["impl"], grad_b
        ),
        grad_b=grad_b,
        **_final_norm(s, T * h, head_saved, tied_head),
        head_copy=vocab * h * act_b if copies and not job["checkpointing"] and full else 0,
    )


#: The final RMSNorm's backward holds this many fp32 b·s·h temporaries at its widest.
NORM_TEMPS = 5


def _final_norm(s: Any, th: int, head_saved: int, tied_head: int) -> dict[str, int]:
    """The Llama family's final RMSNorm backward as a moment of its own: its fp32 temporaries
    (and a tied head's gradient, still a temporary), with what the head and the norm saved
    (``head_saved``) freed but the norm's fp32 input (its ``pow`` backward, the last, still
    needs it). The peak when the vocabulary is small beside the hidden size (no loss spike hides
    it); the chunked loss (:mod:`labkit.memory.lever_peak`) sets its own."""
    if not isinstance(s, architecture.Shape) or s.family != "llama":
        return {}
    return {
        "norm_temp": NORM_TEMPS * th * 4 + tied_head,
        "norm_out": head_saved - th * 4,
        "norm_after_head": True,
    }


def _backward_copies(
    s: Any, copies: int, trainable: dict[str, tuple[int, ...]], job: dict[str, Any], mixed: bool
) -> dict[str, int]:
    """Autocast's weight copies alive in backward: all of them until each matmul's backward frees
    its own; with checkpointing, the head's at the loss (autocast's cache is emptied when the
    forward leaves it) and a recomputed block's in the blocks' backward. LoRA adapters: a
    ``lora_A`` whose input needs no gradient (the first block's, reading the stream) keeps no
    copy of its weight, so that copy is freed when the forward leaves autocast."""
    ckpt = job["checkpointing"] and mixed and job["method"] in {"full", "frozen"}
    if copies and job["method"] == "lora":
        lora = targets.lora_modules(s, job["lora_targets"])
        if not job["checkpointing"]:
            first = [m for m in lora if _in_block0(m.name)]
            unsaved = sum(2 * job["lora_r"] * m.d_in for m in first if reads(m.name) == "x1")
            return {"copies_early": copies - unsaved, "copies_block": copies - unsaved}
        # checkpointed blocks save no copy: autocast's cache frees them all when the forward
        # leaves it; a block's recomputation makes its own again for its backward (block 0's
        # counted whole: which of them its backward has freed by its peak is not modelled, an
        # over-count of at most its unsaved lora_A copies)
        per_block: dict[str, int] = {}
        for m in lora:
            block = _BLOCK.search(m.name)
            key = block.group(2) if block else m.name
            per_block[key] = per_block.get(key, 0) + 2 * job["lora_r"] * (m.d_in + m.d_out)
        top = max(per_block, key=lambda k: int(k) if k.isdigit() else -1)
        return {
            "copies_early": 0,
            "copies_norm": 0,
            "copies_block": per_block[top],
            "copies_bottom": per_block.get("0", 0),
        }
    if not copies or not ckpt or not isinstance(s, architecture.Shape):
        return {"copies_early": copies, "copies_block": copies}
    heads = {k: v for k, v in trainable.items() if k == "lm_head.weight"}
    head = 2 * estimator.autocast_cast_parameters(s, heads, checkpointing=True)
    both = 2 * estimator.autocast_cast_parameters(s, trainable, checkpointing=True)
    return {"copies_early": head, "copies_block": both - head}


def _checkpoint_inputs(s: Any, job: dict[str, Any], act_b: int, rope_b: int) -> int:
    """What the model hands every checkpointed block and nothing saves (non-reentrant
    checkpointing keeps a block's inputs for its recomputation): the Llama family's RoPE tables
    (cos, sin: 2·s·d) and position ids (s int64); GPT-2's position ids and, with frozen
    embeddings, the embeddings' output (a leaf transformers makes require grad); BLOOM's fp32
    b·s² mask and its ALiBi biases (b·a·s)."""
    if not job["checkpointing"] or not isinstance(s, architecture.Shape):
        return 0
    b, q = job["batch"], job["seq"]
    if s.family == "llama":
        mask = b * q * q * rope_b if job["attention"] == "eager" else 0
        return 2 * q * s.head_dim * rope_b + q * 8 + mask
    if s.family == "gpt2":
        return 0 if job["method"] == "full" else q * 8 + b * q * s.hidden * act_b
    return b * q * q * act_b + b * s.heads * q * act_b
