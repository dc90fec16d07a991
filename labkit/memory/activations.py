"""What autograd keeps for backward in one training step, derived op by op (the activations and
the loss buffer of :mod:`labkit.memory.estimator`'s totals).

The derivation follows the transformers 5.24 modeling code of each formula family
(Korthikanti et al.'s method, re-derived): what each op saves for backward, with the storage
sharing and views autograd really has. It is exact (equal to the saved-tensor measurement in
:mod:`labkit.memory.measure`, tests/test_measure.py) for full fine-tuning of all five families in fp32
and pure bf16, eager and SDPA, checkpointing on and off, and under bf16 autocast for Llama,
Mistral and Qwen2; and for LoRA on any targets of all five families in fp32 and pure bf16.

- :func:`activation_bytes`: full fine-tuning, from sizes alone;
- :func:`job_activation_bytes`: any :class:`labkit.memory.job.TrainingJob` (frozen first
  layers, LoRA and QLoRA, autocast);
- :class:`Activations`: the result, item by item.

One block function per family and kind of step (:data:`FULL_BLOCKS`, :data:`LORA_BLOCKS`; a new
family adds one entry to each), all over one :class:`_Step` of sizes and switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.dtypes import DTYPE_BYTES, DTYPE_NAMES
from labkit.memory.job import ATTENTIONS, DEVICES, OptionError, TrainingJob, sdpa_math_kernel
from labkit.models.architecture import Shape, shape_of
from labkit.models.targets import lora_modules


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


def _check_attention(s: Shape, attention: str) -> None:
    choice("attention", attention, ATTENTIONS)
    if s.family == "bloom" and attention == "sdpa":
        raise OptionError("BLOOM has no SDPA attention in transformers 5.24; use {attention:eager}")


def sequence_length(s: Shape, seq: Any) -> int:
    """``seq`` if it is a positive integer the model can take: a model with learned position
    embeddings (GPT-2's ``n_positions``) has no position past its table."""
    q = positive("sequence length", seq)
    if s.positions and q > s.positions:
        raise LabkitError(
            f"sequence length {q} is longer than {s.model_type}'s {s.positions} learned "
            f"positions (n_positions); accepted: 1..{s.positions}"
        )
    return q


def _activation_dtype(dtype: str) -> str:
    if dtype not in DTYPE_BYTES or DTYPE_BYTES[dtype] == 1:
        raise labkit.unknown("activation dtype", dtype, ("fp32", "bf16", "fp16"))
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
    *,
    checkpointing: bool = False,
    dropout: bool = True,
    device: str = "cuda",
) -> Activations:
    """Bytes autograd keeps for backward in one step of full fine-tuning (the saved-tensor
    measurement), from the sizes alone.

    Derived from the transformers 5.24 modeling code, op by op (what each op saves for backward):
    RMSNorm saves its fp32 input, the rsqrt, the normalised value and its output; LayerNorm its
    input, mean and rstd; SiLU its input, the gating product both operands; GeLU-tanh (GPT-2's
    ``gelu_new``, written in Python) five b·s·i tensors; eager attention q, k, v, the b·a·s²
    softmax output (fp32 in Llama/Qwen2/Mistral/BLOOM, plus its cast copy when 16-bit) and the
    output; SDPA q, k, v (GQA-sized), output and the fp32 logsumexp, no s² term (on CPU, dropout
    inside SDPA falls back to the math kernel, which keeps the s² terms). Dropout keeps a mask of
    the activation dtype on CPU and 1 byte on CUDA.

    ``dtype``: activation dtype (``fp32``, ``bf16``, ``fp16``; pure, no autocast). ``dropout``:
    training mode (the config's dropout probabilities apply). ``checkpointing``: layer inputs only
    are kept in forward, plus one block recomputed during backward (``recompute``); the total is
    their sum. Frozen first layers, autocast and LoRA: :func:`job_activation_bytes`.
    """
    s = shape_of(config)
    b, q = positive("batch", batch), sequence_length(s, seq)
    _check_attention(s, attention)
    choice("device", device, DEVICES)
    st = _Step(
        s=s,
        b=b,
        q=q,
        dt=DTYPE_BYTES[_activation_dtype(dtype)],
        attention=attention,
        device=device,
        dropout=dropout,
        checkpointing=checkpointing,
    )
    return _full_activations(st, frozen_layers=0, autocast=False)


def job_activation_bytes(config: Any, job: TrainingJob) -> Activations:
    """Bytes autograd keeps for backward in one step of ``job`` (a formula family).

    Full fine-tuning as :func:`activation_bytes` derives it, with two more switches:

    - frozen first layers (``method="frozen"``): with the embeddings and the first k blocks
      frozen, autograd saves nothing for them; the first trainable block's RMSNorm keeps no input
      (no gradient flows into it) and a tied head, frozen with the embeddings, keeps no input
      either. With (reentrant) checkpointing transformers makes the embeddings' output require
      grad, so the frozen blocks are checkpointed and recomputed too. Exact in fp32 and bf16.
    - autocast (``precision="bf16-mixed"``: fp32 weights, 16-bit compute). Derived for the Llama
      family without attention dropout: the residual stream and the norms stay fp32, every
      linear keeps its own 16-bit cast of its input (q, k and v: three copies), RoPE's fp32 tables
      promote q and k to fp32 and attention keeps 16-bit casts of them. The 16-bit copies of the
      weights are not activations here: the estimator counts them with the weights. For GPT-2,
      BLOOM and attention dropout the pure 16-bit derivation is used (an approximation).

    LoRA and QLoRA (a frozen base, ``lora_dropout=0``; QLoRA's NF4 base computes in the compute
    dtype), for every family and any targets. A frozen op saves only what the gradient of an
    input that requires grad needs: a frozen linear keeps nothing (its weight is a parameter), a
    frozen norm weight no normalised value, and before the first adapted module nothing at all
    (the embeddings are frozen). Kept in every family: each adapter's input (one shared tensor
    when the adapter computes in the base dtype, one cast copy per adapter otherwise: peft 0.21
    keeps adapters in fp32 under a 16-bit base) and its rank-r output; attention's q, k, v,
    output and logsumexp (SDPA) or what each eager matmul/softmax needs (on CPU, SDPA with
    dropout runs the math kernel: fp32 copies and the s² terms); dropout masks where a gradient
    flows; the loss as in full fine-tuning. What each family keeps besides: docs/formulas.md §4.

    With checkpointing, the layer inputs are kept, and transformers makes the embeddings' output
    require grad (``enable_input_require_grads``), so the block recomputed during backward is a
    block whose stream carries a gradient (RoPE's tables, GPT-2's embedding dropout mask and
    BLOOM's embedding LayerNorm included). A 16-bit base under autocast
    (:attr:`TrainingJob.adapters_autocast`): each adapter's matmuls run in the compute dtype, so
    its input copy and its rank-r output are kept in it, not in the adapter dtype.
    """
    s = shape_of(config)
    q = sequence_length(s, job.seq)
    _check_attention(s, job.attention)
    job.check_layers(s.layers)
    compute = job.precision.compute
    st = _Step(
        s=s,
        b=job.batch,
        q=q,
        dt=DTYPE_BYTES[compute],
        attention=job.attention,
        device=job.device,
        dropout=job.dropout,
        checkpointing=job.checkpointing,
    )
    if not job.lora:
        return _full_activations(st, job.frozen_layers, autocast=job.precision.mixed)
    adapters = job.adapters
    targets = lora_modules(s, job.lora_targets)
    st = replace(
        st,
        r=job.lora_r,
        adapted=frozenset(m.name.rsplit(".", 1)[-1] for m in targets),
        adt=st.dt if job.adapters_autocast else DTYPE_BYTES[adapters],
        cast=DTYPE_NAMES[adapters] != DTYPE_NAMES[compute],
    )
    return _lora_activations(st)


# ----------------------------------------------------------------------------- full fine-tuning
def _norm_items(st: _Step) -> dict[str, int]:
    """What a norm whose input and weight need gradients saves: RMSNorm its fp32 input, the
    rsqrt, the normalised value and its output; LayerNorm its input, mean and rstd (fp32 on CUDA,
    the input dtype on CPU) and its output."""
    T, h, dt = st.tokens, st.s.hidden, st.dt
    if st.s.family == "llama":
        return {"input": T * h * 4, "stats": T * 4, "normed": T * h * dt, "output": T * h * dt}
    stat_b = 4 if st.device == "cuda" else dt
    return {"input": T * h * dt, "stats": 2 * T * stat_b, "output": T * h * dt}


def _full_attention(st: _Step) -> dict[str, int]:
    """Attention of a block whose q, k and v all need gradients."""
    s, b, q, T, dt = st.s, st.b, st.q, st.tokens, st.dt
    ad, s2 = s.heads * s.head_dim, b * s.heads * q * q
    out: dict[str, int] = {}
    if st.attention == "eager" or st.math_path:  # the math path: the eager ops, upcast to fp32
        qb = 4 if st.math_path else dt
        out["attn.q"] = T * ad * qb
        out["attn.k"] = out["attn.v"] = _eager_kv(st, qb)
        soft32 = s.family != "gpt2" or st.math_path  # GPT-2's eager softmax stays 16-bit
        out["attn.softmax"] = s2 * (4 if soft32 else dt)
        if st.p_on(s.attn_dropout):
            out["attn.dropout_mask"] = s2 * (4 if st.math_path else st.mask_b)
            out["attn.probs"] = s2 * qb
        elif soft32 and dt != 4:
            out["attn.probs"] = s2 * dt  # the 16-bit copy of the fp32 softmax
        out["attn.out"] = T * ad * dt
    else:
        out["attn.q"], out["attn.out"] = T * ad * dt, T * ad * dt
        out["attn.k"] = out["attn.v"] = T * s.kv_heads * s.head_dim * dt
        out["attn.logsumexp"] = b * s.heads * q * 4
    return out


def _eager_kv(st: _Step, qb: int) -> int:
    """The k (or v) eager attention keeps: ``repeat_kv``'s copy for every query head, but with one
    KV head and one sequence a stride-0 view the batched matmul folds without a copy."""
    view = st.s.kv_heads == 1 and st.b == 1 and not st.math_path
    return st.tokens * (1 if view else st.s.heads) * st.s.head_dim * qb


def _full_block(st: _Step, mlp_tensors: int) -> dict[str, int]:
    """One block of full fine-tuning: norm, attention, norm, an MLP keeping ``mlp_tensors``
    b·s·i tensors, the residual dropout masks and (GPT-2, BLOOM) the fused q/k/v buffer."""
    s, T, h = st.s, st.tokens, st.s.hidden
    norm = _norm_items(st)
    blk = {f"norm1.{k}": v for k, v in norm.items()}
    blk.update(_full_attention(st))
    if st.p_on(s.resid_dropout):
        blk["attn.resid_dropout_mask"] = T * h * st.mask_b
    blk.update({f"norm2.{k}": v for k, v in norm.items()})
    blk["mlp"] = mlp_tensors * T * s.intermediate * st.dt
    if st.p_on(s.resid_dropout):
        blk["mlp.resid_dropout_mask"] = T * h * st.mask_b
    if buffer := _fused_qkv_buffer(st):  # GPT-2 and BLOOM compute q, k, v in one projection
        blk["attn.fused_qkv_buffer"] = buffer
    return blk


def _full_llama_block(st: _Step) -> dict[str, int]:
    """Llama, Mistral, Qwen2: RMSNorms, SwiGLU keeping gate, up, silu(gate) and the product."""
    return _full_block(st, mlp_tensors=4)


def _full_layernorm_block(st: _Step) -> dict[str, int]:
    """GPT-2 and BLOOM: LayerNorms; GPT-2's ``gelu_new`` (written in Python) keeps x, tanh(.),
    1 + tanh(.), 0.5·x and the product, BLOOM's fused GeLU its input and output."""
    return _full_block(st, mlp_tensors=5 if st.s.activation == "gelu_new" else 2)


def _full_activations(st: _Step, frozen_layers: int, autocast: bool) -> Activations:
    """Full fine-tuning (the first ``frozen_layers`` blocks frozen), under ``autocast`` or not."""
    s, T, h = st.s, st.tokens, st.s.hidden
    llama = s.family == "llama"
    mixed = autocast and llama and not st.p_on(s.attn_dropout) and st.dt != 4
    blk = _autocast_llama_block(st) if mixed else FULL_BLOCKS[s.family](st)
    per_layer = sum(blk.values())
    n_train = s.layers - frozen_layers
    items = _full_outside(st, frozen_layers, mixed)
    recompute = 0
    if st.checkpointing:  # every block is checkpointed and, with a gradient stream, recomputed
        items["layer_inputs"] = s.layers * T * h * (4 if mixed else st.dt)
        # the recomputed block re-saves everything except its input when the norm saves the
        # input tensor itself (LayerNorm, or RMSNorm in fp32)
        keeps_input = not llama or st.dt == 4 or mixed
        layer_input = T * h * 4 if mixed else blk["norm1.input"]
        recompute = per_layer - (layer_input if keeps_input else 0)
        if not n_train and not mixed:  # only frozen blocks are recomputed: they keep what the
            # stream's gradient needs, as a LoRA block without adapters does
            frozen = sum(LORA_BLOCKS[s.family](st, True)[0].values())
            recompute = frozen - (T * h * st.dt if keeps_input else 0)
        if llama:
            recompute += items.pop("rope.cos_sin")
    else:
        items["layers"] = n_train * per_layer
        if llama and n_train and frozen_layers:
            # the first trainable block's input carries no gradient: its RMSNorm keeps only the
            # normalised value (for the weight's gradient), not what the input's gradient needs
            items["layers"] -= st.norm()
    items["recompute_one_layer"] = recompute
    blocks = {f"block.{k}": v for k, v in blk.items()}
    logits = _loss_bytes(s, st.b, st.q)
    return Activations(sum(items.values()), logits, per_layer, recompute, {**items, **blocks})


def _full_outside(st: _Step, frozen_layers: int, mixed: bool) -> dict[str, int]:
    """What full fine-tuning keeps outside the blocks: token ids, the embeddings' entry, RoPE's
    tables and the final norm (with checkpointing the layer inputs are added by the caller)."""
    s, T, q, h = st.s, st.tokens, st.q, st.s.hidden
    llama = s.family == "llama"
    n_train = s.layers - frozen_layers
    first_trainable = frozen_layers == 0
    # with reentrant checkpointing transformers makes the embeddings' output require grad
    # (enable_input_require_grads), so the stream carries a gradient through frozen blocks too
    stream_grad = first_trainable or st.checkpointing
    items: dict[str, int] = {}
    if first_trainable:  # the embedding weights' gradients need the ids
        items["input_ids"] = T * 8
        if s.family == "gpt2":
            items["position_ids"] = q * 8
    items.update(_entry_items(st, stream_grad))
    if llama and (n_train or st.checkpointing):
        items["rope.cos_sin"] = 2 * q * s.head_dim * (4 if mixed else st.dt)  # all layers share
    final = _norm_items(st)
    if mixed:  # fp32 input, rsqrt, fp32 normalised value; the head keeps a 16-bit input cast
        final = {
            "input": T * h * 4,
            "stats": T * 4,
            "normed": T * h * 4,
            "head_input": T * h * st.dt,
        }
    if s.tied and not first_trainable:  # the head's weight is the frozen embedding matrix:
        final.pop("head_input" if mixed else "output")  # it keeps no input for a gradient
    if llama and not stream_grad and not n_train:  # all blocks frozen: no gradient reaches
        del final["input"], final["stats"]  # the final RMSNorm's input, only its weight's
    items.update({f"final_norm.{k}": v for k, v in final.items()})
    return items


def _autocast_llama_block(st: _Step) -> dict[str, int]:
    """One Llama-family block under autocast (see :func:`job_activation_bytes`), no dropout."""
    s, b, q, dt, attention = st.s, st.b, st.q, st.dt, st.attention
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
        return sdpa_math_kernel(self.attention, self.device, self.dropout, self.s.attn_dropout)

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
        out["attn.k"] = _eager_kv(st, qb) if qg else 0
        out["attn.softmax"] = s2 * soft_b if scores else 0
        if attn_drop and scores:
            out["attn.dropout_mask"] = s2 * (4 if st.math_path else st.mask_b)
        # probs @ v keeps the probabilities for v's gradient: the softmax output itself without
        # dropout or cast (already counted when the scores need a gradient), else a new tensor
        probs_copy = attn_drop or soft_b != qb
        if vg and (probs_copy or not scores):
            out["attn.probs"] = s2 * (qb if probs_copy else soft_b)
        out["attn.v"] = _eager_kv(st, qb) if scores else 0
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


def _lora_activations(st: _Step) -> Activations:
    """A LoRA or QLoRA step (see :func:`job_activation_bytes`): the blocks in order, each
    entered with or without a gradient-carrying stream, or with checkpointing one recomputed
    block whose stream carries a gradient."""
    s, T, h = st.s, st.tokens, st.s.hidden
    block = LORA_BLOCKS[s.family]
    items: dict[str, int] = {}
    rope_b = 2 * st.q * s.head_dim * st.dt  # cos and sin, shared by all layers
    recompute = 0
    if st.checkpointing:
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
    logits = _loss_bytes(s, st.b, st.q)
    return Activations(sum(items.values()), logits, per_layer, recompute, items)


#: One block of full fine-tuning per family: ``(step) -> items``.
FULL_BLOCKS = {
    "llama": _full_llama_block,
    "gpt2": _full_layernorm_block,
    "bloom": _full_layernorm_block,
}
#: One block of a frozen base with adapters per family: ``(step, stream carries a gradient) ->
#: (items, keeps RoPE's tables, output carries a gradient)``.
LORA_BLOCKS = {
    "llama": _lora_llama_block,
    "gpt2": _lora_layernorm_block,
    "bloom": _lora_layernorm_block,
}
