"""What a model looks like, from its config alone: the one module/parameter table behind both the
memory estimator (:mod:`labkit.memory.estimator`) and the PEFT counts (:mod:`labkit.tuners.peft_methods`).

- :func:`shape_of` reads the numbers a formula needs (:class:`Shape`) for the five *formula
  families* (:data:`FORMULA_FAMILIES`: Llama, Mistral, Qwen2, GPT-2, BLOOM).
- :func:`module_table` lists every module with its kind, (in, out) features and parameter shapes
  (:class:`ModuleInfo`): by formula for the five families, and for any other causal LM that
  transformers can build by building it on the meta device (no memory: ``torch.device("meta")``,
  which ties the output head to the embeddings as the real model does) and reading it with
  :func:`table_from_model`. A test shows formula == meta path on the five families, and meta path
  == the real model's ``numel`` on Mixtral (MoE), Gemma 2, Phi-3, Qwen3 and GPT-NeoX.
- :func:`param_shapes` / :func:`count_parameters`: ``model.named_parameters()`` without building
  the model (a tied weight once).

Which modules LoRA adapts and what each training method trains are in :mod:`labkit.models.targets`,
built on this table. A config may be given by name: names resolve through
:func:`labkit.models.zoo.load_config` (the zoo sits below this module in the models layer; see
``labkit/models/__init__.py``).

A new formula family (say Gemma) is one ``_gemma(shape)`` builder in :data:`_BUILDERS` plus its
fields in :func:`shape_of`; the meta path already covers it, and the formula == meta test checks it.
The formula families and the meta-device path stay in one module because they must produce the
same table.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import positive
from labkit.models import zoo

#: Model types with a formula here (the rest go through the meta device).
FORMULA_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "bloom")
#: The linear layers of a block, per formula family (Mistral and Qwen2 are Llama's).
LINEAR_NAMES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
#: What :func:`labkit.models.targets.trainable_shapes` accepts (``frozen``: embeddings and the
#: first k blocks frozen).
TRAINING_METHODS = ("full", "lora", "qlora", "frozen")
#: The deepest model sized here. The deepest open LLMs have about 130 blocks (Llama 3.1 405B:
#: 126); the tables and dry runs grow with the depth, so a typo (one zero too many) is refused
#: before it takes minutes and gigabytes (10^6 layers: more than 7 GB).
MAX_LAYERS = 512


# ----------------------------------------------------------------------------- Shape
@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only config that memory depends on (symbols as in the docs)."""

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
        """``llama`` for Llama, Mistral and Qwen2 (one block design), else the model type."""
        return "llama" if self.model_type in {"llama", "mistral", "qwen2"} else self.model_type


def _config_dict(config: Any) -> dict[str, Any]:
    """The config as a dict; a name or path is loaded with :func:`labkit.models.zoo.load_config`."""
    if isinstance(config, str | os.PathLike):
        config = zoo.load_config(config)
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "config") and hasattr(config, "named_modules"):  # a model
        config = config.config
    if not hasattr(config, "to_dict"):
        raise LabkitError(
            f"expected a transformers config, a model or a zoo/catalog name, "
            f"got {type(config).__name__}"
        )
    return config.to_dict()


def model_type_of(config: Any) -> str | None:
    """The ``model_type`` of a config, a config dict, a model, a zoo/catalog name or a :class:`Shape`."""
    if isinstance(config, Shape):
        return config.model_type
    return _config_dict(config).get("model_type")


def quantization_of(config: Any) -> dict[str, Any] | None:
    """The ``quantization_config`` of an already-quantized checkpoint's config (bitsandbytes,
    GPTQ, AWQ...), None for a config of unquantized weights (or a :class:`Shape`)."""
    if isinstance(config, Shape):
        return None
    q = _config_dict(config).get("quantization_config")
    if q is None:
        return None
    return q if isinstance(q, Mapping) else q.to_dict() if hasattr(q, "to_dict") else {"": q}


def shape_of(config: Any) -> Shape:
    """Read a :class:`Shape` from a transformers config, a config dict, a name or a :class:`Shape`.

    Raises :class:`LabkitError` for families without a formula (see :data:`FORMULA_FAMILIES`),
    for non-positive sizes, and when the heads do not divide the hidden size.
    """
    if isinstance(config, Shape):
        return config
    c = _config_dict(config)
    mt = c.get("model_type")
    if mt not in FORMULA_FAMILIES:
        raise LabkitError(
            f"model_type {mt!r} is not supported; accepted: {', '.join(FORMULA_FAMILIES)}"
        )
    if c.get("is_encoder_decoder"):  # the formula sizes a decoder-only stack: refuse, not misjudge
        raise LabkitError(
            f"this {mt} config says is_encoder_decoder: true; labkit sizes decoder-only causal LMs; "
            "accepted: a decoder-only config (is_encoder_decoder false or absent)"
        )
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
        positive(name, value)
    _check_depth(mt, L)
    if mt == "gpt2":  # no position past the table: a table of 0 would take no token at all
        positive("learned positions (n_positions)", extra["positions"])
    positive("key/value heads", kv)
    positive("intermediate size", i)
    V = positive("vocab size", c.get("vocab_size"))
    d = c.get("head_dim") if mt not in {"gpt2", "bloom"} else None
    if d is None:
        if h % a:
            raise LabkitError(f"{a} attention heads do not divide hidden size {h}; they must")
        d = h // a
    positive("head dim", d)
    if a % kv:
        raise LabkitError(f"{kv} key/value heads do not divide {a} attention heads; they must")
    return Shape(
        model_type=mt,
        layers=L,
        hidden=h,
        heads=a,
        kv_heads=kv,
        head_dim=d,
        intermediate=i,
        vocab=V,
        tied=bool(tied),
        **extra,
    )


def _check_depth(model_type: Any, layers: int) -> None:
    if layers > MAX_LAYERS:
        raise LabkitError(
            f"{layers} layers in this {model_type} config; accepted: 1..{MAX_LAYERS} "
            "(labkit.models.architecture.MAX_LAYERS; the deepest LLMs have about 130)"
        )


# ----------------------------------------------------------------------------- module table
@dataclass(frozen=True)
class ModuleInfo:
    """One module of a model: dotted name, kind, (in, out) features and its own parameters.

    ``kind`` is ``linear`` (nn.Linear), ``conv1d`` (GPT-2's transposed Conv1D), ``embedding``,
    ``norm`` or ``block`` (anything else); ``params`` maps the module's own parameter names
    (``weight``, ``bias``) to their shapes, as ``named_parameters(recurse=False)`` gives them;
    ``tied`` names those that are another module's parameter (a tied output head), counted there.
    Children are separate entries.
    """

    name: str
    kind: str
    d_in: int = 0
    d_out: int = 0
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tied: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        """Values of the module's own parameters, tied ones included (a copy would hold them)."""
        return sum(math.prod(shp) for shp in self.params.values())

    def size(self, param: str) -> int:
        """Values of one own parameter (0 if the module has none of that name)."""
        return math.prod(self.params[param]) if param in self.params else 0


def _lin(name: str, d_in: int, d_out: int, bias: bool, kind: str = "linear") -> ModuleInfo:
    weight = (d_in, d_out) if kind == "conv1d" else (d_out, d_in)  # Conv1D stores (in, out)
    return ModuleInfo(
        name, kind, d_in, d_out, {"weight": weight, **({"bias": (d_out,)} if bias else {})}
    )


def _emb(name: str, n: int, dim: int) -> ModuleInfo:
    return ModuleInfo(name, "embedding", n, dim, {"weight": (n, dim)})


def _norm(name: str, dim: int, bias: bool) -> ModuleInfo:
    return ModuleInfo(
        name, "norm", dim, dim, {"weight": (dim,), **({"bias": (dim,)} if bias else {})}
    )


def _block(name: str) -> ModuleInfo:
    return ModuleInfo(name, "block")


def _head(s: Shape) -> ModuleInfo:
    tied = ("weight",) if s.tied else ()  # a tied head's weight is the embedding matrix
    weight = {"weight": (s.vocab, s.hidden)}
    return ModuleInfo("lm_head", "linear", s.hidden, s.vocab, params=weight, tied=tied)


def _llama_like(s: Shape) -> list[ModuleInfo]:
    h, d, i = s.hidden, s.head_dim, s.intermediate
    out = [_block("model"), _emb("model.embed_tokens", s.vocab, h), _block("model.layers")]
    for n in range(s.layers):
        p = f"model.layers.{n}"
        out += [
            _block(p),
            _block(f"{p}.self_attn"),
            _lin(f"{p}.self_attn.q_proj", h, s.heads * d, s.qkv_bias),
            _lin(f"{p}.self_attn.k_proj", h, s.kv_heads * d, s.qkv_bias),
            _lin(f"{p}.self_attn.v_proj", h, s.kv_heads * d, s.qkv_bias),
            _lin(f"{p}.self_attn.o_proj", s.heads * d, h, s.o_bias),
            _block(f"{p}.mlp"),
            _lin(f"{p}.mlp.gate_proj", h, i, s.mlp_bias),
            _lin(f"{p}.mlp.up_proj", h, i, s.mlp_bias),
            _lin(f"{p}.mlp.down_proj", i, h, s.mlp_bias),
            _block(f"{p}.mlp.act_fn"),
            _norm(f"{p}.input_layernorm", h, False),
            _norm(f"{p}.post_attention_layernorm", h, False),
        ]
    return out + [_norm("model.norm", h, False), _block("model.rotary_emb"), _head(s)]


def _gpt2(s: Shape) -> list[ModuleInfo]:
    h, i = s.hidden, s.intermediate
    out = [
        _block("transformer"),
        _emb("transformer.wte", s.vocab, h),
        _emb("transformer.wpe", s.positions, h),
        _block("transformer.drop"),
        _block("transformer.h"),
    ]
    for n in range(s.layers):
        p = f"transformer.h.{n}"
        out += [
            _block(p),
            _norm(f"{p}.ln_1", h, True),
            _block(f"{p}.attn"),
            _lin(f"{p}.attn.c_attn", h, 3 * h, True, "conv1d"),
            _lin(f"{p}.attn.c_proj", h, h, True, "conv1d"),
            _block(f"{p}.attn.attn_dropout"),
            _block(f"{p}.attn.resid_dropout"),
            _norm(f"{p}.ln_2", h, True),
            _block(f"{p}.mlp"),
            _lin(f"{p}.mlp.c_fc", h, i, True, "conv1d"),
            _lin(f"{p}.mlp.c_proj", i, h, True, "conv1d"),
            _block(f"{p}.mlp.act"),
            _block(f"{p}.mlp.dropout"),
        ]
    return out + [_norm("transformer.ln_f", h, True), _head(s)]


def _bloom(s: Shape) -> list[ModuleInfo]:
    h, i = s.hidden, s.intermediate
    out = [
        _block("transformer"),
        _emb("transformer.word_embeddings", s.vocab, h),
        _norm("transformer.word_embeddings_layernorm", h, True),
        _block("transformer.h"),
    ]
    for n in range(s.layers):
        p = f"transformer.h.{n}"
        out += [
            _block(p),
            _norm(f"{p}.input_layernorm", h, True),
            _block(f"{p}.self_attention"),
            _lin(f"{p}.self_attention.query_key_value", h, 3 * h, True),
            _lin(f"{p}.self_attention.dense", h, h, True),
            _block(f"{p}.self_attention.attention_dropout"),
            _norm(f"{p}.post_attention_layernorm", h, True),
            _block(f"{p}.mlp"),
            _lin(f"{p}.mlp.dense_h_to_4h", h, i, True),
            _block(f"{p}.mlp.gelu_impl"),
            _lin(f"{p}.mlp.dense_4h_to_h", i, h, True),
        ]
    return out + [_norm("transformer.ln_f", h, True), _head(s)]


#: The formula of each family's module table (a new family plugs in here).
_BUILDERS = {"llama": _llama_like, "gpt2": _gpt2, "bloom": _bloom}


def transformers_config(config: Any):
    """A transformers config from a config, a dict (with ``model_type``), a model or a name."""
    if isinstance(config, Shape):
        raise LabkitError("a Shape has no transformers config; accepted: a config or a name")
    if hasattr(config, "named_modules") and hasattr(config, "config"):  # a model
        return config.config
    if hasattr(config, "to_dict") and hasattr(config, "model_type"):
        return config
    c = _config_dict(config)
    from transformers import AutoConfig

    if c.get("auto_map") and not _known_model_type(c.get("model_type")):
        raise LabkitError(
            f"model_type {c.get('model_type')!r} needs remote code (auto_map), which labkit does "
            "not run; accepted: a causal LM config transformers knows"
        )
    mt = c.pop("model_type", None)
    if not _known_model_type(mt):
        raise labkit.unknown("model_type", mt, ["a model type transformers knows"])
    from huggingface_hub.errors import StrictDataclassError

    try:
        return AutoConfig.for_model(mt, **c)
    except (ValueError, TypeError, KeyError, ArithmeticError, StrictDataclassError) as err:
        # transformers' config validation (a str where a bool belongs, a zero divisor...)
        cause = err.__cause__ or err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise LabkitError(
            f"transformers refuses this {mt} config ({first[:160]}); accepted: a config "
            "transformers' own validation accepts"
        ) from None


def meta_model(config: Any):
    """The causal LM ``config`` describes, built on the meta device (shapes, no memory).

    ``torch.device("meta")`` ties the output head to the embeddings as the real model does
    (accelerate's ``init_empty_weights`` does not under transformers 5).
    """
    import torch

    with torch.device("meta"):
        return build_causal_lm(config)


@dataclass(frozen=True)
class _ConfigKey:
    """A config under its JSON text: equal and hashed by the text, carrying the config itself."""

    text: str
    config: Any = field(compare=False, hash=False)


@functools.lru_cache(maxsize=8)
def _meta_table(key: _ConfigKey) -> tuple[ModuleInfo, ...]:
    """The module table of the config built on the meta device, for the last 8 configs (an
    estimate reads the table of an 8B model several times; building it takes about a second)."""
    return tuple(table_from_model(meta_model(key.config)))


def build_causal_lm(config: Any, **kwargs: Any):
    """``AutoModelForCausalLM.from_config(config, **kwargs)`` in the caller's device or fake-tensor
    context, with one clear line when transformers cannot build it (an unknown or remote-code
    model type, a config that is not a decoder-only causal LM's: :func:`check_decoder_only`)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(transformers_config(config))
    check_decoder_only(cfg)
    try:
        return AutoModelForCausalLM.from_config(cfg, **kwargs)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabkitError(
            f"transformers cannot build a causal LM from this {cfg.model_type} config ({first}); "
            "accepted: sizes and settings transformers can build (see the value it names)"
        ) from None


def check_decoder_only(config: Any) -> None:
    """Refuse in one line what would be sized as something else: an encoder-decoder (BART,
    Whisper, T5: ``is_encoder_decoder``; its causal LM class is the decoder alone), an encoder
    (BERT, MiniLM: a masked-LM family not set up as a decoder; its causal LM class adds an
    untrained head), a model type with no causal LM, more layers than :data:`MAX_LAYERS`, a
    mixture of experts routing each token to more experts than it has."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    cfg = transformers_config(config)
    mt = cfg.model_type
    cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(mt)
    if cfg.is_encoder_decoder:
        why = "an encoder-decoder model" + (f" ({cls} would be its decoder alone)" if cls else "")
    elif mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(cfg, "is_decoder", False):
        why = f"an encoder, a masked LM ({cls} would add an untrained causal head)"
    elif cls is None:
        why = "a model with no causal LM in transformers"
    else:
        why = ""
    if why:
        raise LabkitError(
            f"{mt} is {why}; labkit sizes and tunes decoder-only causal LMs; accepted: a causal LM config "
            f"({', '.join(FORMULA_FAMILIES)}, mixtral...)"
        )
    text = cfg.get_text_config()
    layers = getattr(text, "num_hidden_layers", None)
    if isinstance(layers, int):
        _check_depth(mt, layers)
    counts = ("num_local_experts", "num_experts", "n_routed_experts")
    experts = next(
        (getattr(text, k) for k in counts if isinstance(getattr(text, k, None), int)), None
    )
    per_token = getattr(text, "num_experts_per_tok", None)
    if isinstance(experts, int) and isinstance(per_token, int) and not 1 <= per_token <= experts:
        raise LabkitError(
            f"this {mt} config routes each token to {per_token} of {experts} experts; accepted: "
            "1 <= num_experts_per_tok <= the number of experts"
        )


def _known_model_type(model_type: Any) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def table_from_model(model) -> list[ModuleInfo]:
    """The module table read from a built model (real or on the meta device)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    out = []
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if not name:
            continue
        own = dict(mod.named_parameters(recurse=False))
        params = {k: tuple(p.shape) for k, p in own.items()}
        tied = tuple(k for k, p in own.items() if id(p) in seen)
        seen |= {id(p) for p in own.values()}
        if isinstance(mod, torch.nn.Linear):
            kind, dims = "linear", (mod.in_features, mod.out_features)
        elif isinstance(mod, Conv1D):
            kind, dims = "conv1d", (mod.weight.shape[0], mod.nf)
        elif isinstance(mod, torch.nn.Embedding):
            kind, dims = "embedding", (mod.num_embeddings, mod.embedding_dim)
        elif (
            "weight" in params and set(params) <= {"weight", "bias"} and len(params["weight"]) == 1
        ):
            kind, dims = "norm", (params["weight"][0],) * 2
        else:
            kind, dims = "block", (0, 0)
        out.append(ModuleInfo(name, kind, *dims, params=params, tied=tied))
    return out


def module_table(config: Any) -> list[ModuleInfo]:
    """Every module of the causal LM ``config`` describes, with shapes, from the config.

    ``config``: a transformers config, a config dict, a model, a zoo/catalog name or a
    :class:`Shape`. The five formula families are derived by formula; any other family is built on
    the meta device (:func:`meta_model`) and read with :func:`table_from_model`.
    """
    if isinstance(config, Shape):
        return _BUILDERS[config.family](config)
    if hasattr(config, "named_modules"):
        return table_from_model(config)
    c = _config_dict(config)
    if c.get("model_type") in FORMULA_FAMILIES:
        s = shape_of(c)
        return _BUILDERS[s.family](s)
    key = _ConfigKey(json.dumps(c, sort_keys=True, default=str), config)
    return list(_meta_table(key))


# ----------------------------------------------------------------------------- parameters
def param_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor's name and shape, as ``model.named_parameters()`` lists them.

    Tied output embeddings are listed once (under the input embedding), as PyTorch does.
    """
    return {
        f"{m.name}.{p}": shp
        for m in module_table(config)
        for p, shp in m.params.items()
        if p not in m.tied
    }


def count_parameters(config: Any) -> int:
    """Exact parameter count (tied embeddings once, GQA, biases, norms, MoE experts):
    ``sum(p.numel() for p in model.parameters())``."""
    return sum(math.prod(shp) for shp in param_shapes(config).values())
