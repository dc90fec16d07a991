"""The peak of a training step, phase by phase: the largest set of tensors alive at one moment,
predicted from the components :mod:`labkit.memory.estimator` computes exactly, and held to the
live-tensor trace of real steps (:mod:`labkit.memory.trace`).

A step never holds every component at once. Its moments (the trace shows them, op by op):

- ``forward`` ends with everything autograd saved (the activations and the fp32 log-softmax of the
  loss), the b·s·V logits and the loss' own temporaries alive;
- ``backward`` starts with a spike: the loss' gradient (b·s·V fp32) and the log-softmax's gradient
  (b·s·V fp32) beside the saved log-softmax; then it frees activations as it makes gradients, and
  ends, for a trainable embedding, with every gradient alive plus the embedding's (a tied one is
  added to the head's out of place: old, new and sum alive at once);
- ``optimizer`` holds weights + gradients + state + the update's temporaries: AdamW foreach about one
  more copy of the trainable parameters, single-tensor about two of the largest, fused none;
- ``zero_grad`` finds weights + gradients + state and frees the gradients.

The first step has no optimizer state before its update; later steps carry it through forward and
backward, so the peak is the larger of the two. With gradient accumulation the gradients of the
earlier micro-batches are alive through the later ones, and each new gradient is a temporary
until it is added in place.

What the model leaves out (a CPU trace cannot see them; :func:`gpu_overheads` names them): the
CUDA context, the caching allocator's reserved-but-free blocks, cuBLAS workspaces, and on CUDA
kernels' own workspaces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from labkit import LabkitError
from labkit.checks import choice
from labkit.dtypes import DTYPE_BYTES
from labkit.memory import activations, dryrun, estimator
from labkit.models import architecture

#: How the optimizer updates: ``foreach`` (lists of tensors at once: torch's default on CUDA),
#: ``fused`` (one kernel), ``single`` (a loop over tensors: torch's default on CPU).
IMPLS = ("foreach", "fused", "single")
#: The optimizers the peak knows: the estimator's and SGD without momentum (no state).
OPTIMIZERS = (*estimator.OPTIMIZERS, "sgd-nomomentum")
#: The categories of live bytes (as :data:`labkit.memory.trace.CATEGORIES`, plus the token ids).
CATEGORIES = (
    "weights",
    "weight_copies",
    "gradients",
    "optimizer_state",
    "saved_activations",
    "temporaries",
    "inputs",
)


def default_impl(device: str = "cuda") -> str:
    """What ``torch.optim.AdamW()`` picks when told nothing: foreach on CUDA, single-tensor on
    CPU (torch 2.13, ``_default_to_fused_or_foreach``)."""
    choice("device", device, ("cpu", "cuda"))
    return "foreach" if device == "cuda" else "single"


@dataclass
class Moment:
    """One moment of a step: its phase, what happens, and the bytes alive by category."""

    phase: str
    label: str
    alive: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.alive.values())


@dataclass
class Peak:
    """The predicted peak of a training step (bytes): ``peak`` at ``phase`` (``label`` says the
    moment, ``alive`` what is alive then, ``step`` whether the first or a later step sets it);
    ``phases``: the largest live bytes of each phase (over both steps); ``first`` / ``later``:
    every moment of each step; ``breakdown``: the estimator's components it is built from."""

    peak: int
    phase: str
    label: str
    step: str
    alive: dict[str, int]
    phases: dict[str, int]
    first: list[Moment]
    later: list[Moment]
    breakdown: estimator.Breakdown
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The figures for JSON: ``peak``, ``peak_phase``, ``peak_alive``, ``phases``."""
        return {
            "peak": self.peak,
            "peak_phase": self.phase,
            "peak_moment": self.label,
            "peak_step": self.step,
            "peak_alive": dict(self.alive),
            "phases": dict(self.phases),
        }


# ----------------------------------------------------------------------------- the parts
@dataclass
class _Parts:
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


def _qlora_autocast_activations(s: Any, job: dict[str, Any]) -> tuple[dict[str, int], int]:
    """QLoRA's saved bytes under autocast: its adapters' matmuls run in 16 bit, as a 16-bit
    LoRA base under autocast (:func:`labkit.memory.activations.lora_activation_bytes`)."""
    acts = activations.lora_activation_bytes(
        s,
        job["batch"],
        job["seq"],
        job["lora_targets"],
        job["lora_r"],
        dtype=job["precision"][:4],
        adapter_dtype=job["adapter_dtype"],
        attention=job["attention"],
        checkpointing=job["checkpointing"],
        dropout=job["dropout"],
        device=job["device"],
        autocast=True,
    )
    return acts.items, acts.total


def _cache(s: Any, job: dict[str, Any], act_b: int, fp32_autocast: bool) -> tuple[int, int]:
    """(bytes the KV cache holds, the part of it autograd does not save). transformers keeps the
    cache on in training unless checkpointing; attention saves its own inputs, and the cache's
    k and v are those inputs except: eager attention with GQA in the Llama family (it saves the
    repeated copies); GPT-2 under SDPA (the CPU kernel saves its own copy of one of them in fp32,
    of both in 16 bit); the Llama family under autocast with fp32 weights, whose cached k is fp32
    (RoPE's fp32 tables promote it) while attention saves 16-bit casts."""
    if job["checkpointing"]:
        return 0, 0
    dtype = "fp32" if act_b == 4 else "bf16"
    cache = estimator.kv_cache_bytes(s, job["batch"], job["seq"], dtype)
    if not isinstance(s, architecture.Shape):
        return cache, 0
    if s.family == "llama" and fp32_autocast:
        k32 = estimator.kv_cache_bytes(s, job["batch"], job["seq"], "fp32") // 2
        return k32 + cache // 2, k32
    unsaved = 0
    if s.family == "llama" and job["attention"] == "eager" and s.kv_heads != s.heads:
        unsaved = 2
    if s.family == "gpt2" and job["attention"] == "sdpa":
        unsaved = 1 if act_b == 4 else 2
    return cache, unsaved * cache // 2


#: LoRA target names by where they read from in a block: the block's (normed) input, the
#: attention's output, the MLP's (normed) input, the MLP's activation.
_READS = {
    "x1": ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value"),
    "attn": ("o_proj", "attn.c_proj", "self_attention.dense"),
    "x2": ("gate_proj", "up_proj", "c_fc", "dense_h_to_4h"),
    "act": ("down_proj", "mlp.c_proj", "dense_4h_to_h"),
}


def _reads(name: str) -> str:
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
    mods = [m for m in architecture.lora_modules(s, job["lora_targets"]) if _in_block0(m.name)]
    mask_b = adt if job["device"] == "cpu" else 1
    grad = {"x1": not first}
    adapted = {_reads(m.name) for m in mods}
    grad["attn"] = grad["x1"] or "x1" in adapted
    grad["x2"] = grad["attn"] or "attn" in adapted
    grad["act"] = grad["x2"] or "x2" in adapted
    extra = 0
    for m in mods:
        where = _reads(m.name)
        extra += T * m.d_in * (adt + (mask_b if grad[where] else 0))
        if cast:
            extra -= T * m.d_in * adt
    if not cast:  # the shared inputs lora_A kept
        extra -= sum(T * next(m.d_in for m in mods if _reads(m.name) == w) * adt for w in adapted)
    return extra


def _in_block0(name: str) -> bool:
    block = _BLOCK.search(name)
    return bool(block) and block.group(2) == "0"


def _check(optimizer: str, impl: str | None, device: str, lora_dropout: float, method: str) -> str:
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("device", device, ("cpu", "cuda"))
    impl = impl or default_impl(device)
    choice("optimizer implementation", impl, IMPLS)
    if impl == "fused" and optimizer != "adamw":
        raise LabkitError(f"fused applies to adamw, got --optimizer {optimizer}; accepted: adamw")
    if not isinstance(lora_dropout, int | float) or not 0 <= lora_dropout < 1:
        raise LabkitError(f"LoRA dropout must be a number in [0, 1), got {lora_dropout!r}")
    if lora_dropout and method not in {"lora", "qlora"}:
        raise LabkitError("a LoRA dropout needs --method lora or qlora")
    return impl


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


def _parts(config: Any, b: estimator.Breakdown, job: dict[str, Any]) -> _Parts:
    """The sizes of :class:`_Parts` from the estimator's breakdown and the job."""
    formula = estimator.is_formula_family(config)
    s = architecture.shape_of(config) if formula else config
    method, precision = job["method"], job["precision"]
    batch, seq, T = job["batch"], job["seq"], job["batch"] * job["seq"]
    layers, vocab = estimator.layers_and_vocab(s)
    mixed = precision.endswith("-mixed")
    act_b = 4 if precision == "fp32" else 2
    trainable = architecture.trainable_shapes(
        s, method, r=job["lora_r"], targets=job["lora_targets"], frozen_layers=job["frozen_layers"]
    )
    n_train = sum(math.prod(x) for x in trainable.values())
    if method in {"full", "frozen"}:
        w_dtype = base = "fp32" if precision == "fp32" or mixed else "bf16"
        stored = estimator.weight_bytes(s, w_dtype)
        buf_b = DTYPE_BYTES[w_dtype]
    else:
        base = "nf4" if method == "qlora" else ("fp32" if precision == "fp32" or mixed else "bf16")
        base = job["base_dtype"] or base
        ab = 4 if precision == "fp32" else DTYPE_BYTES[job["adapter_dtype"]]
        stored = estimator.weight_bytes(s, base) + n_train * ab
        buf_b = 2 if base == "nf4" else DTYPE_BYTES[base]
    copies = b.weights - stored
    if method == "qlora":
        stored += NF4_TENSOR_CONSTANTS * len(architecture.block_linears(s))
    items = b.details["activation_items"]
    saved_total = b.activations + b.logits
    if method == "qlora" and mixed and formula:  # adapters compute in 16 bit under autocast
        items, saved_total = _qlora_autocast_activations(s, job)
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
    cache, extra = _cache(s, job, act_b, fp32_autocast)
    head_frozen = not groups["head_weight"] and not (full and tied)
    hidden = T * h * (4 if fp32_autocast else act_b) if head_frozen or fp32_autocast else 0
    if job["lora_dropout"]:
        cast = DTYPE_BYTES[job["adapter_dtype"] if precision != "fp32" else "fp32"] != (
            2 if base in {"bf16", "fp16", "nf4"} else 4
        )
        adt = ab
        per_block = _lora_dropout_bytes(s, job, adt, cast, first=False)
        if job["checkpointing"]:
            recompute += per_block
        else:
            first = _lora_dropout_bytes(s, job, adt, cast, first=True)
            saved += first + (layers - 1) * per_block
    new_emb = vocab * h * grad_b  # a new embedding gradient, before it is added
    entry = {k: v for k, v in items.items() if k.startswith(("rope.", "embedding")) and formula}
    layer_items = items.get("layers", 0) or sum(
        v for k, v in items.items() if k.startswith("layers.")
    )
    if not formula:
        layer_items = max(0, b.activations - recompute - ids)
    return _Parts(
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
        end=(2 * new_emb if tied else T * h * act_b) if full else 0,
        end_later=(3 * new_emb if tied else new_emb + T * h * act_b) if full else 0,
        layers=layers,
        block_saved=layer_items // layers,
        entry_saved=sum(entry.values()),
        layer_input=items.get("layer_inputs", 0) // layers,
        recompute=recompute,
        block_temp=_block_temp(s, T, act_b, full or method == "frozen"),
        g_head=groups["head"],
        g_head_weight=groups["head_weight"] or (new_emb if full and tied else 0),
        tied_head=new_emb if full and tied else 0,
        head_saved=sum(v for k, v in items.items() if k.startswith("final_norm")),
        g_emb=groups["emb"],
        g_first=groups.get("block.0", 0),
        g_down=groups.get("down", 0),
        opt_temp=_opt_temporaries(
            _param_order(s, trainable), job["optimizer"], job["impl"], grad_b
        ),
        grad_b=grad_b,
    )


def _backward_copies(
    s: Any, copies: int, trainable: dict[str, tuple[int, ...]], job: dict[str, Any], mixed: bool
) -> dict[str, int]:
    """Autocast's weight copies alive in backward: all of them until each matmul's backward frees
    its own; with checkpointing, the head's at the loss (autocast's cache is emptied when the
    forward leaves it) and a recomputed block's in the blocks' backward."""
    ckpt = job["checkpointing"] and mixed and job["method"] in {"full", "frozen"}
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


def _prepare(model, config: Any, job: dict[str, Any]):
    """Freeze / add LoRA adapters (peft, with the job's dropout) as the job trains."""
    method = job["method"]
    if method == "frozen":
        keep = set(
            architecture.trainable_shapes(config, "frozen", frozen_layers=job["frozen_layers"])
        )
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
    if method not in {"lora", "qlora"}:
        return model
    from peft import LoraConfig, get_peft_model

    mods = architecture.lora_modules(config, job["lora_targets"])
    lora = LoraConfig(
        r=job["lora_r"],
        target_modules=[m.name for m in mods],
        lora_dropout=job["lora_dropout"],
        fan_in_fan_out=any(m.kind == "conv1d" for m in mods),
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    adapters = "fp32" if job["precision"] == "fp32" else job["adapter_dtype"]
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(dryrun.TORCH_DTYPES[adapters])
    return model


def _period(text: Any) -> int | None:
    """The smallest number of layers that repeats (``layer_types``: Gemma's sliding and global
    layers), or None when the stack does not repeat (then the dry run keeps every layer)."""
    types = list(getattr(text, "layer_types", None) or [])
    n = int(text.num_hidden_layers)
    if not types:
        return 1
    for p in range(1, n + 1):
        if all(types[i] == types[i % p] for i in range(n)) and n % p == 0:
            return p if p < n else None
    return None


def _with_layers(config: Any, layers: int):
    """``config`` with ``layers`` decoder layers (``layer_types`` cut to match)."""
    import copy

    c = copy.deepcopy(architecture.transformers_config(config))
    c.num_hidden_layers = layers
    if getattr(c, "layer_types", None):
        c.layer_types = list(c.layer_types[:layers])
    return c


def _dry_run(config: Any, job: dict[str, Any], p: _Parts) -> list[Moment]:
    """Forward and backward of one step on fake tensors, traced: the largest live set of the
    forward, and of the first and the second half of the backward (the loss spike and the top
    blocks; the bottom blocks and the embeddings), with the stored weights.

    A repeating stack is traced at 2 and 3 repeats of its period and each moment extrapolated
    to the full depth: a moment's bytes grow by a constant per layer (the saved activations, or
    the gradients, of one more layer), so two depths fix the line. A stack that does not repeat
    is traced whole."""
    text = architecture.transformers_config(config)
    period = _period(text) if hasattr(text, "num_hidden_layers") else None
    full = int(getattr(text, "num_hidden_layers", 0))
    if period is None or full <= 3 * period:
        return _traced_moments(config, job, p)
    d1, d2 = 2 * period, 3 * period
    m1 = _traced_moments(_with_layers(config, d1), job, p)
    m2 = _traced_moments(_with_layers(config, d2), job, p)
    out = []
    for a, b in zip(m1, m2, strict=True):
        alive = {
            k: a.alive[k] + (b.alive[k] - a.alive[k]) * (full - d1) // (d2 - d1) for k in a.alive
        }
        alive["weights"], alive["inputs"] = p.weights, p.inputs
        out.append(Moment(a.phase, a.label, alive))
    return out


def _traced_moments(config: Any, job: dict[str, Any], p: _Parts) -> list[Moment]:
    """One fake forward and backward of ``config``, traced (see :func:`_dry_run`)."""
    import torch

    from labkit.memory import measure, trace

    precision, method = job["precision"], job["method"]
    mixed = precision.endswith("-mixed")
    weights = "fp32" if precision == "fp32" or mixed else "bf16"
    if method == "qlora":
        weights = "bf16"
    elif method == "lora" and job["base_dtype"]:
        weights = job["base_dtype"]
    model, mode = dryrun.fake_model(
        config,
        attention=job["attention"],
        dtype=weights,
        prepare=lambda m: _prepare(m, config, job),
    )
    if not job["dropout"]:
        model.eval()
    with mode, dryrun._unpacked_positions():  # noqa: SLF001 - the dry run's own patch
        if job["checkpointing"]:
            measure.enable_checkpointing(model, reentrant=False)
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (job["batch"], job["seq"]))
        autocast = None
        if mixed:
            autocast = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        tracker = trace.StepTracker()
        step = trace.trace_training(
            model,
            None,
            ids,
            steps=1,
            autocast_dtype=autocast,
            outputs_alive=job["outputs_alive"],
            tracker=tracker,
        )[0]
    bwd = [i for i, ph in enumerate(step.phases) if ph == "backward"]
    halves = {
        "forward": [i for i, ph in enumerate(step.phases) if ph == "forward"],
        "backward": bwd[: len(bwd) // 2],
        "backward ": bwd[len(bwd) // 2 :],
    }
    out = []
    for name, events in halves.items():
        top = max(events, key=lambda i: (step.timeline[i], -i))
        alive = dict.fromkeys(CATEGORIES, 0)
        for rec in tracker.live_at(top):
            alive[rec.category] += rec.nbytes
        alive["weights"], alive["inputs"] = p.weights, p.inputs
        label = {"forward": "forward", "backward": "backward, first half (loss, top blocks)"}
        out.append(
            Moment(
                name.strip(),
                f"{label.get(name, 'backward, second half (bottom blocks, embeddings)')} (dry run)",
                alive,
            )
        )
    return out


def _forward_moments(p: _Parts, base: dict[str, int], tag: str) -> list[Moment]:
    temps = p.logits + p.loss_temp + 4 + p.cache_extra + p.hidden + p.fwd_extra
    return [
        Moment(
            "forward",
            "loss computed: every saved activation and the logits" + tag,
            p.at(**base, weight_copies=p.copies, saved_activations=p.saved, temporaries=temps),
        )
    ]


def _backward_moments(p: _Parts, job: dict[str, Any], base: dict[str, int], later: bool, tag: str):
    """The loss spike, the head, the top and bottom blocks and the end of backward."""
    held_out = job["outputs_alive"]
    # + the loss and its gradient; with checkpointing the blocks' shared inputs
    held = (p.logits + p.cache_extra if held_out else 0) + 8 + p.fwd_extra
    cache_held = p.cache if held_out else 0
    # at the bottom block: the upper blocks' cache (their saved k, v are freed), block 0's part
    # that is not saved
    bottom_cache = (cache_held * (p.layers - 1) + (p.cache_extra if held_out else 0)) // p.layers
    held_bottom = held - (p.cache_extra if held_out else 0) + bottom_cache
    g0 = base["gradients"]
    copies = p.copies_early
    after_loss = p.saved - p.nll_saved - p.lsm
    grads_top = g0 if later else p.g_head
    top_temp = p.stream + p.block_temp + p.g_down + held + (0 if later else p.tied_head)
    new_head = p.g_head_weight if later else 0
    ckpt = job["checkpointing"]
    block = p.recompute if ckpt else 0
    g_bottom = g0 if later else p.grads - p.g_first - p.g_emb
    if ckpt:
        bottom_saved = p.layer_input + p.entry_saved
    else:
        bottom_saved = p.block_saved + p.entry_saved
    spike = 2 * p.lsm + held
    return [
        Moment(
            "backward",
            "loss backward: two b·s·V fp32 gradients beside the log-softmax" + tag,
            p.at(
                **base,
                weight_copies=copies,
                saved_activations=p.saved - p.nll_saved,
                temporaries=spike,
            ),
        ),
        Moment(
            "backward",
            "head backward: its weight gradient beside the b·s·V gradient" + tag,
            p.at(
                **{**base, "gradients": g0 if later else p.g_head_weight},
                weight_copies=copies,
                saved_activations=after_loss,
                temporaries=p.head_in + p.stream + new_head + held,
            ),
        ),
        Moment(
            "backward",
            "top block backward: its MLP gradients" + tag,
            p.at(
                **{**base, "gradients": grads_top},
                weight_copies=p.copies_block,
                saved_activations=after_loss - p.head_saved + block,
                temporaries=top_temp,
            ),
        ),
        Moment(
            "backward",
            "bottom block backward: nearly every gradient alive" + tag,
            p.at(
                **{**base, "gradients": g_bottom},
                weight_copies=p.copies_block if ckpt else 0,
                saved_activations=bottom_saved + block,
                temporaries=top_temp - held + held_bottom,
            ),
        ),
        Moment(
            "backward",
            "backward ends: every gradient alive" + tag,
            p.at(
                **{**base, "gradients": p.grads},
                saved_activations=cache_held,
                temporaries=(p.end_later if later else p.end)
                + held
                - p.fwd_extra
                - (p.cache_extra if held_out else 0),
            ),
        ),
    ]


def _moments(
    p: _Parts, job: dict[str, Any], later: bool, traced: list[Moment] | None = None
) -> list[Moment]:
    """The moments of one step (the first, or a later one that finds the optimizer state);
    ``traced``: forward and backward read from a dry run (any other causal LM)."""
    state = p.state if later else 0
    out: list[Moment] = []
    for micro in range(min(job["grad_accum"], 2)):
        base = {
            "weights": p.weights,
            "inputs": p.inputs,
            "optimizer_state": state,
            "gradients": p.grads if micro else 0,
        }
        tag = f" (micro-batch {micro + 1})" if job["grad_accum"] > 1 else ""
        if traced is not None:
            for m in traced:
                alive = {**m.alive, **base, "gradients": m.alive["gradients"] + base["gradients"]}
                out.append(Moment(m.phase, m.label + tag, alive))
            continue
        out += _forward_moments(p, base, tag)
        out += _backward_moments(p, job, base, bool(micro), tag)
    states = {
        "weights": p.weights,
        "inputs": p.inputs,
        "gradients": p.grads,
        "optimizer_state": p.state,
    }
    out.append(Moment("optimizer", "optimizer step", p.at(**states, temporaries=p.opt_temp)))
    out.append(Moment("zero_grad", "zero_grad: the gradients are freed", p.at(**states)))
    return out


#: The training options of :func:`labkit.memory.estimator.training_memory` the peak reads, with
#: that function's defaults (the job as the estimator takes it today).
JOB_DEFAULTS: dict[str, Any] = {
    "method": "full",
    "precision": "bf16-mixed",
    "optimizer": "adamw",
    "batch": 1,
    "seq": 512,
    "grad_accum": 1,
    "checkpointing": False,
    "attention": "sdpa",
    "lora_r": 8,
    "lora_targets": "default",
    "frozen_layers": 0,
    "adapter_dtype": "fp32",
    "base_dtype": None,
    "dropout": True,
    "device": "cuda",
}


def training_peak(
    config: Any,
    *,
    impl: str | None = None,
    lora_dropout: float = 0.0,
    outputs_alive: bool = True,
    **job: Any,
) -> Peak:
    """The peak of a training step of ``config`` (see the module docstring).

    ``job``: the options of :func:`labkit.memory.estimator.training_memory` (:data:`JOB_DEFAULTS`;
    ``optimizer`` also takes ``sgd-nomomentum``). The levers it adds: ``impl``, the optimizer's
    implementation (:data:`IMPLS`; default: what torch picks on ``device``); ``lora_dropout``
    (peft's ``lora_dropout``, its default 0.0: a dropout keeps a copy of each adapted input);
    ``outputs_alive``: the model output (its b·s·V logits and KV cache) held until backward
    ends, as ``out = model(**batch); out.loss.backward()`` does; False drops it before backward,
    as transformers' Trainer does.
    """
    unknown = set(job) - set(JOB_DEFAULTS)
    if unknown:
        raise LabkitError(
            f"unknown training option {sorted(unknown)[0]!r}; accepted: "
            f"{', '.join([*JOB_DEFAULTS, 'impl', 'lora_dropout', 'outputs_alive'])}"
        )
    job = {**JOB_DEFAULTS, **job}
    impl = _check(job["optimizer"], impl, job["device"], lora_dropout, job["method"])
    sgd0 = job["optimizer"] == "sgd-nomomentum"
    b = estimator.training_memory(
        config, **{**job, "optimizer": "sgd" if sgd0 else job["optimizer"]}
    )
    job.update(
        impl=impl,
        lora_dropout=lora_dropout,
        outputs_alive=outputs_alive,
        batch=b.details["batch"],
        seq=b.details["seq"],
    )
    parts = _parts(config, b, job)
    traced = None if estimator.is_formula_family(config) else _dry_run(config, job, parts)
    first, later = _moments(parts, job, False, traced), _moments(parts, job, True, traced)
    top = max(((m, "first") for m in first), key=lambda x: x[0].total)
    top_later = max(((m, "later") for m in later), key=lambda x: x[0].total)
    best, step = top_later if top_later[0].total >= top[0].total else top
    phases: dict[str, int] = {}
    for m in first + later:
        phases[m.phase] = max(phases.get(m.phase, 0), m.total)
    return Peak(
        peak=best.total,
        phase=best.phase,
        label=best.label,
        step=step,
        alive=dict(best.alive),
        phases=phases,
        first=first,
        later=later,
        breakdown=b,
        details={"impl": impl, "parts": parts},
    )
