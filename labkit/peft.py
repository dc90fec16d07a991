"""Parameter-efficient fine-tuning: configs with the course defaults, target discovery, counts.

- :func:`count_trainable` computes, from the formulas alone (no model is built for the four
  course families), how many trainable parameters a peft config adds to a model config: prompt
  tuning, P-tuning (MLP / LSTM), prefix tuning (with / without projection) and LoRA (list, regex,
  ``"all-linear"``, ``modules_to_save``, ``bias``, DoRA, ``rank_pattern``, ``layers_to_transform``).
  It follows peft 0.21's own rules (which modules match, GQA-shaped prefixes, tied embeddings), so
  it equals ``PeftModel.get_nb_trainable_parameters()[0]``; :func:`count_terms` gives the parts.
- :func:`module_table` lists a model's modules with their shapes, derived from the config for
  Llama / Mistral / Qwen2, GPT-2 and BLOOM (other families: built on the meta device);
  :func:`linear_layers`, :func:`regex_matches`, :func:`lora_targets` and
  :func:`default_target_modules` answer "which modules should LoRA adapt?".
- :func:`make_config` builds each method's config with the course defaults (:data:`DEFAULTS`),
  :func:`attach` loads a fresh base model and wraps it (``get_peft_model`` modifies its base in
  place, so every method needs its own base).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from labkit import LabkitError

#: The methods this module configures, in course order ("full" = full fine-tuning, no peft).
METHODS = (
    "prompt",
    "prompt-text",
    "p-tuning-mlp",
    "p-tuning-lstm",
    "prefix",
    "prefix-projection",
    "lora",
    "full",
)

#: Course defaults per method (config fields), chosen by measurement on zoo-llama + the chat task
#: (2 CPU threads, see the numbers in notebooks 08-12).
DEFAULTS: dict[str, dict[str, Any]] = {
    "prompt": {"num_virtual_tokens": 8},
    "prompt-text": {"num_virtual_tokens": 8, "init_text": "The fox lives in the forest."},
    "p-tuning-mlp": {"num_virtual_tokens": 8, "encoder_hidden_size": 64},
    "p-tuning-lstm": {"num_virtual_tokens": 8, "encoder_hidden_size": 64},
    "prefix": {"num_virtual_tokens": 8},
    "prefix-projection": {"num_virtual_tokens": 8, "encoder_hidden_size": 64},
    "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0},
    "full": {},
}

#: Training arguments per method (``labkit.training.train(model, tok, **TRAIN_ARGS[method])``).
#: Virtual-token methods need far larger learning rates than weight updates. Prompt tuning and
#: P-tuning also keep the learning rate constant: with the Trainer's default linear decay to zero
#: the same epochs scored lower on every seed (``benchmarks/peft_seeds.py --contrast``).
_CONSTANT = {"lr_scheduler_type": "constant"}
TRAIN_ARGS: dict[str, dict[str, Any]] = {
    "prompt": {"num_train_epochs": 15, "learning_rate": 3e-1, **_CONSTANT},
    "prompt-text": {"num_train_epochs": 15, "learning_rate": 3e-1, **_CONSTANT},
    "p-tuning-mlp": {"num_train_epochs": 15, "learning_rate": 1e-2, **_CONSTANT},
    "p-tuning-lstm": {"num_train_epochs": 20, "learning_rate": 3e-2, **_CONSTANT},
    "prefix": {"num_train_epochs": 10, "learning_rate": 1e-1},
    "prefix-projection": {"num_train_epochs": 10, "learning_rate": 1e-2},
    "lora": {"num_train_epochs": 4, "learning_rate": 3e-3},
    "full": {"num_train_epochs": 4, "learning_rate": 1e-3},
}


# --- the module table -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleInfo:
    """One module of a model: dotted name, kind, (in, out) features and its own parameters.

    ``kind`` is ``linear`` (nn.Linear), ``conv1d`` (GPT-2's transposed Conv1D), ``embedding``,
    ``norm`` or ``block`` (a container); ``params`` maps the module's own parameter names
    (``weight``, ``bias``) to their sizes; children are separate entries.
    """

    name: str
    kind: str
    d_in: int = 0
    d_out: int = 0
    params: dict[str, int] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(self.params.values())


def _lin(name: str, d_in: int, d_out: int, bias: bool, kind: str = "linear") -> ModuleInfo:
    params = {"weight": d_in * d_out, **({"bias": d_out} if bias else {})}
    return ModuleInfo(name, kind, d_in, d_out, params)


def _emb(name: str, n: int, dim: int) -> ModuleInfo:
    return ModuleInfo(name, "embedding", n, dim, {"weight": n * dim})


def _norm(name: str, dim: int, bias: bool) -> ModuleInfo:
    return ModuleInfo(name, "norm", dim, dim, {"weight": dim, **({"bias": dim} if bias else {})})


def _block(name: str) -> ModuleInfo:
    return ModuleInfo(name, "block")


LLAMA_LIKE = ("llama", "mistral", "qwen2")


def _llama_like(c) -> list[ModuleInfo]:
    h, a, v = c.hidden_size, c.num_attention_heads, c.vocab_size
    kv = getattr(c, "num_key_value_heads", None) or a
    d = getattr(c, "head_dim", None) or h // a
    qkv_bias = True if c.model_type == "qwen2" else bool(getattr(c, "attention_bias", False))
    o_bias = False if c.model_type == "qwen2" else bool(getattr(c, "attention_bias", False))
    mlp_bias = bool(getattr(c, "mlp_bias", False))
    out = [_block("model"), _emb("model.embed_tokens", v, h), _block("model.layers")]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        out += [
            _block(p),
            _block(f"{p}.self_attn"),
            _lin(f"{p}.self_attn.q_proj", h, a * d, qkv_bias),
            _lin(f"{p}.self_attn.k_proj", h, kv * d, qkv_bias),
            _lin(f"{p}.self_attn.v_proj", h, kv * d, qkv_bias),
            _lin(f"{p}.self_attn.o_proj", a * d, h, o_bias),
            _block(f"{p}.mlp"),
            _lin(f"{p}.mlp.gate_proj", h, c.intermediate_size, mlp_bias),
            _lin(f"{p}.mlp.up_proj", h, c.intermediate_size, mlp_bias),
            _lin(f"{p}.mlp.down_proj", c.intermediate_size, h, mlp_bias),
            _block(f"{p}.mlp.act_fn"),
            _norm(f"{p}.input_layernorm", h, False),
            _norm(f"{p}.post_attention_layernorm", h, False),
        ]
    out += [_norm("model.norm", h, False), _block("model.rotary_emb"), _lin("lm_head", h, v, False)]
    return out


def _gpt2(c) -> list[ModuleInfo]:
    h, v = c.n_embd, c.vocab_size
    inner = c.n_inner or 4 * h
    out = [
        _block("transformer"),
        _emb("transformer.wte", v, h),
        _emb("transformer.wpe", c.n_positions, h),
        _block("transformer.drop"),
        _block("transformer.h"),
    ]
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
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
            _lin(f"{p}.mlp.c_fc", h, inner, True, "conv1d"),
            _lin(f"{p}.mlp.c_proj", inner, h, True, "conv1d"),
            _block(f"{p}.mlp.act"),
            _block(f"{p}.mlp.dropout"),
        ]
    out += [_norm("transformer.ln_f", h, True), _lin("lm_head", h, v, False)]
    return out


def _bloom(c) -> list[ModuleInfo]:
    h, v = c.hidden_size, c.vocab_size
    out = [
        _block("transformer"),
        _emb("transformer.word_embeddings", v, h),
        _norm("transformer.word_embeddings_layernorm", h, True),
        _block("transformer.h"),
    ]
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
        out += [
            _block(p),
            _norm(f"{p}.input_layernorm", h, True),
            _block(f"{p}.self_attention"),
            _lin(f"{p}.self_attention.query_key_value", h, 3 * h, True),
            _lin(f"{p}.self_attention.dense", h, h, True),
            _block(f"{p}.self_attention.attention_dropout"),
            _norm(f"{p}.post_attention_layernorm", h, True),
            _block(f"{p}.mlp"),
            _lin(f"{p}.mlp.dense_h_to_4h", h, 4 * h, True),
            _block(f"{p}.mlp.gelu_impl"),
            _lin(f"{p}.mlp.dense_4h_to_h", 4 * h, h, True),
        ]
    out += [_norm("transformer.ln_f", h, True), _lin("lm_head", h, v, False)]
    return out


FAMILIES = {"llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like}
FAMILIES |= {"gpt2": _gpt2, "bloom": _bloom}


def _as_config(model_config):
    if isinstance(model_config, str):
        from labkit import zoo

        return zoo.load_config(model_config)
    if isinstance(model_config, torch.nn.Module):
        return model_config.config
    if not hasattr(model_config, "to_dict"):
        raise LabkitError(
            f"expected a transformers config, a model or a zoo/catalog name, got {type(model_config).__name__}"
        )
    return model_config


def table_from_model(model: torch.nn.Module) -> list[ModuleInfo]:
    """The module table read from a built model (real or on the meta device)."""
    from transformers.pytorch_utils import Conv1D

    out = []
    for name, mod in model.named_modules():
        if not name:
            continue
        params = {k: p.numel() for k, p in mod.named_parameters(recurse=False)}
        if isinstance(mod, torch.nn.Linear):
            out.append(ModuleInfo(name, "linear", mod.in_features, mod.out_features, params))
        elif isinstance(mod, Conv1D):
            out.append(ModuleInfo(name, "conv1d", mod.weight.shape[0], mod.nf, params))
        elif isinstance(mod, torch.nn.Embedding):
            out.append(ModuleInfo(name, "embedding", mod.num_embeddings, mod.embedding_dim, params))
        elif params and set(params) <= {"weight", "bias"} and len(mod.weight.shape) == 1:
            dim = mod.weight.shape[0]
            out.append(ModuleInfo(name, "norm", dim, dim, params))
        else:
            out.append(ModuleInfo(name, "block", 0, 0, params))
    return out


def module_table(model_config) -> list[ModuleInfo]:
    """Every module of the causal LM ``model_config`` describes, with shapes, from the config.

    Llama, Mistral, Qwen2, GPT-2 and BLOOM are derived by formula; any other family is built on
    the meta device (no memory) and read with :func:`table_from_model`.
    """
    config = _as_config(model_config)
    build = FAMILIES.get(config.model_type)
    if build is not None:
        return build(config)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return table_from_model(model)


# --- target-module discovery ----------------------------------------------------------------


def linear_layers(model_or_config) -> list[ModuleInfo]:
    """The Linear / Conv1D layers LoRA can adapt (the output head ``lm_head`` included, last)."""
    table = (
        table_from_model(model_or_config)
        if isinstance(model_or_config, torch.nn.Module)
        else module_table(model_or_config)
    )
    return [m for m in table if m.kind in {"linear", "conv1d"}]


def _strip(name: str) -> str:
    return name.removeprefix("base_model.model.")


def regex_matches(pattern: str, model_or_config) -> list[str]:
    """Module names ``pattern`` matches the way peft matches a string ``target_modules``.

    peft uses ``re.fullmatch`` on the dotted name, so ``"q_proj"`` as a regex matches nothing
    (write ``".*q_proj"``), unlike the list form ``["q_proj"]`` which matches name endings.
    """
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise LabkitError(f"invalid regex {pattern!r}: {err}; accepted: a Python regex") from None
    table = (
        table_from_model(model_or_config)
        if isinstance(model_or_config, torch.nn.Module)
        else module_table(model_or_config)
    )
    return [_strip(m.name) for m in table if rx.fullmatch(_strip(m.name))]


def default_target_modules(model_type: str) -> list[str]:
    """The LoRA targets peft picks when ``target_modules`` is None, for a model type."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    if model_type not in MAPPING:
        raise LabkitError(
            f"peft has no default LoRA targets for model type {model_type!r}; "
            f"known: {', '.join(sorted(MAPPING)[:12])}... (pass target_modules explicitly)"
        )
    return list(MAPPING[model_type])


def _in_modules_to_save(key: str, modules_to_save) -> bool:
    return bool(modules_to_save) and any(
        re.match(rf"(^|.*\.){m}($|\..*)", key) for m in modules_to_save
    )


def _layer_ok(config, key: str) -> bool:
    indexes = getattr(config, "layers_to_transform", None)
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    patterns = getattr(config, "layers_pattern", None)
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    idx = int(match.group("idx"))
    return idx == indexes if isinstance(indexes, int) else idx in indexes


def _target_matches(config, key: str, targets) -> bool:
    """peft's ``check_target_module_exists`` (exclusions, list / regex / layers_to_transform)."""
    exclude = getattr(config, "exclude_modules", None)
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    if _in_modules_to_save(key, getattr(config, "modules_to_save", None)):
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    return any(key.endswith(f".{t}") for t in targets) and _layer_ok(config, key)


def _resolve_targets(config, model_type: str, table: list[ModuleInfo]):
    targets = config.target_modules
    if targets is None:
        return default_target_modules(model_type)
    if isinstance(targets, str) and targets.lower() == "all-linear":
        return {m.name for m in table if m.kind in {"linear", "conv1d"} and m.name != "lm_head"}
    return targets


def lora_targets(lora_config, model_config) -> list[ModuleInfo]:
    """The modules a LoRA config adapts on ``model_config`` (peft's matching rules)."""
    config = _as_config(model_config)
    table = module_table(config)
    if getattr(lora_config, "target_parameters", None):
        raise LabkitError("target_parameters is not supported here; accepted: target_modules")
    targets = _resolve_targets(lora_config, config.model_type, table)
    found = [m for m in table if _target_matches(lora_config, m.name, targets)]
    bad = [m.name for m in found if m.kind not in {"linear", "conv1d", "embedding"}]
    if bad:
        raise LabkitError(
            f"target module {bad[0]!r} is not a Linear, Conv1D or Embedding layer; accepted: "
            "names or a regex that match only such layers (see labkit.peft.linear_layers)"
        )
    if not found:
        raise LabkitError(
            f"target_modules={targets!r} matches no module of this {config.model_type} model; "
            "accepted: names from labkit.peft.linear_layers(config) or a full-match regex"
        )
    return found


# --- counting -------------------------------------------------------------------------------


def _peft_type(peft_config) -> str:
    kind = getattr(peft_config, "peft_type", None)
    kind = getattr(kind, "value", kind)
    if kind not in {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA"}:
        raise LabkitError(
            f"unsupported peft config {type(peft_config).__name__} ({kind}); accepted: "
            "PromptTuningConfig, PromptEncoderConfig, PrefixTuningConfig, LoraConfig"
        )
    return kind


def prompt_dims(peft_config, model_config) -> dict[str, int]:
    """``num_layers``, ``token_dim``, ``num_attention_heads``, ``encoder_hidden_size`` as peft
    resolves them (``_prepare_prompt_learning_config``): for prefix tuning on a model with
    ``num_key_value_heads`` (GQA), ``token_dim`` becomes ``head_dim * num_key_value_heads``.
    """
    config = _as_config(model_config)
    cfg = config.to_dict()
    layers = peft_config.num_layers
    if layers is None:
        layers = (
            getattr(config, "num_hidden_layers", None) or cfg.get("num_layers") or cfg["n_layer"]
        )
    dim = peft_config.token_dim
    if dim is None:
        dim = cfg.get("hidden_size") or cfg.get("n_embd") or cfg["d_model"]
    heads = peft_config.num_attention_heads
    if heads is None:
        heads = cfg.get("num_attention_heads") or cfg.get("n_head") or cfg["num_heads"]
    if _peft_type(peft_config) == "PREFIX_TUNING" and "num_key_value_heads" in cfg:
        head_dim = cfg.get("head_dim") or dim // heads
        heads = cfg["num_key_value_heads"]
        dim = head_dim * heads
    hidden = getattr(peft_config, "encoder_hidden_size", None) or dim
    return {
        "num_layers": layers,
        "token_dim": dim,
        "num_attention_heads": heads,
        "encoder_hidden_size": hidden,
    }


def _modules_to_save_terms(peft_config, table: list[ModuleInfo]) -> dict[str, int]:
    """Trainable copies peft makes for ``modules_to_save`` (suffix match, outermost only)."""
    names = getattr(peft_config, "modules_to_save", None)
    if not names:
        return {}
    wrapped: list[str] = []
    for m in table:
        if any(m.name.endswith(n) for n in names) and not any(
            m.name.startswith(w + ".") for w in wrapped
        ):
            wrapped.append(m.name)
    terms = {}
    for w in wrapped:
        size = sum(m.numel for m in table if m.name == w or m.name.startswith(w + "."))
        terms[f"modules_to_save copy of {w}"] = size
    return terms


def count_terms(peft_config, model_config) -> dict[str, int]:
    """The parts of :func:`count_trainable`, named after the formula term they come from."""
    kind = _peft_type(peft_config)
    config = _as_config(model_config)
    if getattr(peft_config, "inference_mode", False):
        return {"inference_mode=True: everything frozen": 0}
    task = getattr(getattr(peft_config, "task_type", None), "value", peft_config.task_type)
    if task not in {None, "CAUSAL_LM"}:
        raise LabkitError(f"task_type {task!r} is not supported here; accepted: CAUSAL_LM or None")
    table = module_table(config)
    if kind == "LORA":
        return _lora_terms(peft_config, config, table)
    d = prompt_dims(peft_config, config)
    n = peft_config.num_virtual_tokens * (peft_config.num_transformer_submodules or 1)
    h, e, layers = d["token_dim"], d["encoder_hidden_size"], d["num_layers"]
    terms: dict[str, int] = {}
    if kind == "PROMPT_TUNING":
        terms["virtual token embeddings n*h"] = n * h
    elif kind == "P_TUNING":
        terms["virtual token embeddings n*h"] = n * h
        encoder = getattr(peft_config.encoder_reparameterization_type, "value", None)
        encoder = encoder or str(peft_config.encoder_reparameterization_type)
        if encoder == "MLP":
            terms["MLP h->e (h*e+e)"] = h * e + e
            terms["MLP e->e (e*e+e)"] = e * e + e
            terms["MLP e->h (e*h+h)"] = e * h + h
        else:  # bidirectional LSTM, then a 2-layer MLP head
            for layer in range(peft_config.encoder_num_layers):
                d_in = h if layer == 0 else 2 * e
                terms[f"LSTM layer {layer} (2 directions * 4e*(in+e+2))"] = (
                    2 * 4 * e * (d_in + e + 2)
                )
            terms["MLP head 2e->2e"] = 2 * e * 2 * e + 2 * e
            terms["MLP head 2e->h"] = 2 * e * h + h
    else:  # PREFIX_TUNING
        if peft_config.prefix_projection:
            terms["prefix token embeddings n*h"] = n * h
            terms["projection h->e (h*e+e)"] = h * e + e
            terms["projection e->2*L*h (e*2Lh+2Lh)"] = e * 2 * layers * h + 2 * layers * h
        else:
            terms["key/value prefixes n*L*2*h"] = n * layers * 2 * h
    terms.update(_modules_to_save_terms(peft_config, table))
    return terms


def _lora_terms(cfg, config, table: list[ModuleInfo]) -> dict[str, int]:
    from peft.utils.other import get_pattern_key

    targets = lora_targets(cfg, config)
    rank_pattern = getattr(cfg, "rank_pattern", None) or {}
    terms: dict[str, int] = {}

    def add(key: str, value: int) -> None:
        terms[key] = terms.get(key, 0) + value

    for m in targets:
        r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), m.name), cfg.r)
        label = m.name.rsplit(".", 1)[-1]
        if m.kind == "embedding":
            add(f"{label}: r*(V+h)", r * (m.d_in + m.d_out))
        else:
            add(f"{label}: r*(d_in+d_out)", r * (m.d_in + m.d_out))
        if getattr(cfg, "lora_bias", False):
            add(f"{label}: lora_B bias d_out", m.d_out)
        if getattr(cfg, "use_dora", False):
            add(f"{label}: DoRA magnitude d_out", m.d_out)
    saved = _modules_to_save_terms(cfg, table)
    if cfg.bias == "all":
        inside = [k.removeprefix("modules_to_save copy of ") for k in saved]
        biases = sum(
            m.params.get("bias", 0)
            for m in table
            if not any(m.name == w or m.name.startswith(w + ".") for w in inside)
        )
        add("bias='all': every bias", biases)
    elif cfg.bias == "lora_only":
        add(
            "bias='lora_only': biases of adapted layers",
            sum(m.params.get("bias", 0) for m in targets),
        )
    terms.update(saved)
    return terms


def count_trainable(peft_config, model_config) -> int:
    """Trainable parameters ``get_peft_model(model, peft_config)`` leaves, from the formulas.

    ``model_config``: a transformers config (or a model, or a zoo / catalog name). The config is
    not modified (peft's ``get_peft_model`` fills in ``token_dim`` etc.; both give the same count).
    """
    return sum(count_terms(copy.deepcopy(peft_config), model_config).values())


# --- configs with the course defaults -------------------------------------------------------


def tokenizer_path(model_id: str) -> str:
    """Local folder of ``model_id``'s tokenizer (``tiny-*`` models share zoo-llama's)."""
    from labkit import zoo

    return zoo.resolve("zoo-llama" if str(model_id).startswith("tiny-") else model_id)


def make_config(method: str, model_id: str = "zoo-llama", **overrides: Any):
    """The peft config for ``method`` (see :data:`METHODS`) with :data:`DEFAULTS` + overrides.

    ``prompt-text`` initialises the virtual tokens from ``init_text``'s token embeddings (needs
    the tokenizer's local folder, found from ``model_id``). ``full`` has no peft config.
    """
    from peft import (
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptEncoderReparameterizationType,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
    )

    if method not in METHODS:
        raise LabkitError(f"unknown PEFT method {method!r}; accepted: {', '.join(METHODS)}")
    if method == "full":
        raise LabkitError("'full' fine-tuning has no peft config; train the base model directly")
    kw = {**DEFAULTS[method], **overrides}
    task = TaskType.CAUSAL_LM
    if method == "prompt":
        return PromptTuningConfig(task_type=task, prompt_tuning_init=PromptTuningInit.RANDOM, **kw)
    if method == "prompt-text":
        text = kw.pop("init_text")
        return PromptTuningConfig(
            task_type=task,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=kw.pop("tokenizer_name_or_path", tokenizer_path(model_id)),
            **kw,
        )
    if method.startswith("p-tuning"):
        encoder = (
            PromptEncoderReparameterizationType.MLP
            if method.endswith("mlp")
            else PromptEncoderReparameterizationType.LSTM
        )
        return PromptEncoderConfig(task_type=task, encoder_reparameterization_type=encoder, **kw)
    if method.startswith("prefix"):
        return PrefixTuningConfig(
            task_type=task, prefix_projection=method == "prefix-projection", **kw
        )
    return LoraConfig(task_type=task, **kw)


def attach(model_id: str, method: str, seed: int = 0, **overrides: Any):
    """A fresh base model wrapped for ``method`` (``full``: the base itself, all trainable).

    Always loads a new base: ``get_peft_model`` injects layers into the model it is given.
    """
    from peft import get_peft_model

    from labkit import zoo

    torch.manual_seed(seed)
    base = zoo.load_model(model_id, seed=seed)
    if method == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    config = make_config(method, model_id, **overrides)
    torch.manual_seed(seed)
    return get_peft_model(base, config)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of any model, peft's way (shared tensors once)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # deduplicated by torch
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def training_state_bytes(model: torch.nn.Module, optimizer=None) -> dict[str, int]:
    """Bytes of the training state a method adds: trainable weights, their gradients, optimizer.

    Weights and optimizer state are read from the real tensors (``labkit.measure.state_bytes``
    for the optimizer, after at least one step); gradients are one tensor per trainable weight of
    the same dtype (the Trainer frees them after each step, so they are sized from the weights).
    Activations are not included.
    """
    from labkit import measure

    seen: set[int] = set()
    weights = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            weights += p.numel() * p.element_size()
    opt = measure.state_bytes(model, optimizer).optimizer if optimizer is not None else 0
    return {"trainable weights": weights, "gradients": weights, "optimizer state": opt}
