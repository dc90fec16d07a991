"""Parameter-efficient fine-tuning methods: configs with the course defaults, and counts.

(Named ``peft_methods`` so that it does not shadow the ``peft`` library it wraps.)

- :func:`count_trainable` computes, from the formulas alone (no model is built for the five
  formula families), how many trainable parameters a peft config adds to a model config: prompt
  tuning, P-tuning (MLP / LSTM), prefix tuning (with / without projection) and LoRA (list, regex,
  ``"all-linear"``, ``modules_to_save``, ``bias``, DoRA, ``rank_pattern``, ``layers_to_transform``).
  It follows peft 0.21's own rules (which modules match, GQA-shaped prefixes, tied embeddings), so
  it equals ``PeftModel.get_nb_trainable_parameters()[0]``; :func:`count_terms` gives the parts.
  Which modules a model has, and which of them LoRA adapts, is :mod:`labkit.models.architecture`'s
  (:func:`~labkit.models.architecture.module_table`, :func:`~labkit.models.targets.lora_modules`).
- :func:`make_config` builds each method's config with the course defaults (:data:`DEFAULTS`),
  :func:`attach` loads a fresh base model and wraps it (``get_peft_model`` modifies its base in
  place, so every method needs its own base).

A new PEFT method: an entry in :data:`PEFT_METHODS`, :data:`DEFAULTS` and :data:`TRAIN_ARGS`, a
branch in :func:`make_config`, its terms in :func:`count_terms`, and a case in
``tests/test_peft_methods.py`` that compares the count with peft's own.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import numbers
from typing import Any

import torch

import labkit
from labkit import LabkitError, checks
from labkit.checks import number, positive, seed_value
from labkit.models.architecture import (
    ModuleInfo,
    check_decoder_only,
    module_table,
    transformers_config,
)
from labkit.models.targets import lora_modules

#: The methods this module configures, in course order ("full" = full fine-tuning, no peft).
PEFT_METHODS = (
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

#: Training arguments per method (``labkit.training.finetune.train(model, tok, **TRAIN_ARGS[method])``).
#: Virtual-token methods need far larger learning rates than weight updates. Prompt and P-tuning
#: keep it constant: with linear decay to zero the same epochs scored lower seed by seed (seeds 0-2,
#: 89b1f10's ``benchmarks/peft_seeds.py``; ``benchmarks/README.md``): ranges apart for the text
#: init and the MLP, overlapping for the random init and the LSTM (constant there by analogy only).
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
    config = transformers_config(model_config)
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


def check_virtual_tokens(n: Any, model_config: Any) -> int:
    """``n`` if it is a positive integer the model's context holds with room for one real token:
    prompt and prefix tokens take positions before the text (a prefix shifts the text's positions
    by ``n``), so ``n`` must stay below the context (``max_position_embeddings``; BLOOM's ALiBi
    has no limit)."""
    n = positive("num_virtual_tokens", n)
    config = transformers_config(model_config).get_text_config()
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and n >= context:
        raise LabkitError(
            f"num_virtual_tokens={n} fills this {config.model_type} model's context of {context} "
            f"positions (max_position_embeddings), leaving none for the text; accepted: "
            f"1..{context - 1}, in practice far fewer (8-32)"
        )
    return n


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
    """The parts of :func:`count_trainable`, named after the formula term they come from.

    LoRA's terms are summed per module name and say how many modules they cover:
    ``"4 x q_proj: r*(d_in+d_out)"`` is ``q_proj`` in 4 layers, 4 times the one-layer formula.
    """
    kind = _peft_type(peft_config)
    config = transformers_config(model_config)
    if getattr(peft_config, "inference_mode", False):
        return {"inference_mode=True: everything frozen": 0}
    task = getattr(getattr(peft_config, "task_type", None), "value", peft_config.task_type)
    if task not in {None, "CAUSAL_LM"}:
        raise LabkitError(f"task_type {task!r} is not supported here; accepted: CAUSAL_LM or None")
    table = module_table(config)
    if kind == "LORA":
        return _lora_terms(peft_config, config, table)
    check_virtual_tokens(peft_config.num_virtual_tokens, config)
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
        # h here is peft's token_dim: d_kv = n_kv * head_dim, the width of one layer's keys
        if peft_config.prefix_projection:
            terms["prefix token embeddings n*d_kv"] = n * h
            terms["projection d_kv->e (d_kv*e+e)"] = h * e + e
            terms["projection e->2*L*d_kv (e*2L*d_kv+2L*d_kv)"] = (
                e * 2 * layers * h + 2 * layers * h
            )
        else:
            terms["key/value prefixes n*L*2*d_kv"] = n * layers * 2 * h
    terms.update(_modules_to_save_terms(peft_config, table))
    return terms


def _lora_terms(cfg, config, table: list[ModuleInfo]) -> dict[str, int]:
    from peft.utils.other import get_pattern_key

    positive("LoRA rank r", cfg.r)
    targets = lora_modules(config, cfg)
    rank_pattern = getattr(cfg, "rank_pattern", None) or {}
    _check_rank(cfg.r, targets)
    terms: dict[str, int] = {}

    def add(key: str, value: int) -> None:
        terms[key] = terms.get(key, 0) + value

    # one term per module name, summed over the modules that carry it: "4 x q_proj" is q_proj
    # in each of 4 layers, so the printed value is 4 times the one-layer formula
    names = [m.name.rsplit(".", 1)[-1] for m in targets]
    carrying = collections.Counter(names)
    for m, name in zip(targets, names, strict=True):
        r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), m.name), cfg.r)
        label = f"{carrying[name]} x {name}"
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
            m.size("bias")
            for m in table
            if not any(m.name == w or m.name.startswith(w + ".") for w in inside)
        )
        add("bias='all': every bias", biases)
    elif cfg.bias == "lora_only":
        add(
            "bias='lora_only': biases of adapted layers",
            sum(m.size("bias") for m in targets),
        )
    terms.update(saved)
    return terms


def _check_rank(r: int, targets: list[ModuleInfo]) -> None:
    """Refuse a rank no adapted layer can use: above min(d_in, d_out) of every target, the
    update ``B @ A`` is no longer low rank anywhere (more parameters, nothing more to learn)."""
    full = max(min(m.d_in, m.d_out) for m in targets)
    if r > full:
        raise LabkitError(
            f"LoRA rank r={r} is larger than min(d_in, d_out) of every adapted layer (at most "
            f"{full} here); accepted: r <= {full}, usually far less (8-64)"
        )


def count_trainable(peft_config, model_config) -> int:
    """Trainable parameters ``get_peft_model(model, peft_config)`` leaves, from the formulas.

    ``model_config``: a transformers config (or a model, or a zoo / catalog name). The config is
    not modified (peft's ``get_peft_model`` fills in ``token_dim`` etc.; both give the same count).
    """
    return sum(count_terms(copy.deepcopy(peft_config), model_config).values())


# --- configs with the course defaults -------------------------------------------------------


def tokenizer_path(model_id: str) -> str:
    """Local folder of ``model_id``'s tokenizer, as :func:`labkit.models.zoo.load_tokenizer` finds it
    (the zoo holds the one rule: ``tiny-*`` models share zoo-llama's tokenizer)."""
    from labkit.models import zoo

    return zoo.load_tokenizer(model_id).name_or_path


def _check_overrides(method: str, cls: type, kw: dict[str, Any]) -> None:
    """One line for a field the config class does not have, or a value peft would accept
    silently (or fail on much later): a rank, a token count below 1, a dropout outside [0, 1)."""
    fields = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    fields += ["init_text"] if method == "prompt-text" else []
    for key in kw:
        if key not in fields:
            raise labkit.unknown(f"{cls.__name__} option for {method!r}:", key, fields)
    for key in ("r", "num_virtual_tokens", "encoder_hidden_size"):
        if key in kw and kw[key] is not None:
            positive("LoRA rank r" if key == "r" else key, kw[key])
    p = kw.get("lora_dropout", 0.0)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise LabkitError(f"lora_dropout must be a probability in [0, 1), got {p!r}")
    targets = kw.get("target_modules")
    if targets is not None and not isinstance(targets, str):
        checks.strings("target_modules (module names, or one regex or 'all-linear')", targets)
    if "lora_alpha" in kw:  # NaN gives NaN logits; 0 scales every update to nothing
        number("lora_alpha", kw["lora_alpha"], above=0)
    text = kw.get("init_text", "x")
    if not isinstance(text, str) or not text.strip():  # no token: all start from BOS
        raise LabkitError(
            f"init_text must be a text whose tokens start the virtual tokens, got {text!r}; "
            f"accepted: a non-empty str, e.g. {DEFAULTS['prompt-text']['init_text']!r}"
        )


def make_config(method: str, model_id: str = "zoo-llama", **overrides: Any):
    """The peft config for ``method`` (see :data:`PEFT_METHODS`) with :data:`DEFAULTS` + overrides.

    ``prompt`` draws its virtual tokens from N(0, 1) (``RANDOM``), or with
    ``prompt_tuning_init="SAMPLE_VOCAB"`` copies random tokens' embeddings; ``prompt-text``
    initialises them from ``init_text``'s token embeddings (needs the tokenizer's local folder,
    found from ``model_id``). ``full`` has no peft config.
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

    if method not in PEFT_METHODS:
        raise labkit.unknown("PEFT method", method, PEFT_METHODS)
    if method == "full":
        raise LabkitError("'full' fine-tuning has no peft config; train the base model directly")
    kw = {**DEFAULTS[method], **overrides}
    cls = {"prompt": PromptTuningConfig, "prompt-text": PromptTuningConfig}.get(method)
    cls = cls or (PromptEncoderConfig if method.startswith("p-tuning") else None)
    cls = cls or (PrefixTuningConfig if method.startswith("prefix") else LoraConfig)
    _check_overrides(method, cls, kw)
    task = TaskType.CAUSAL_LM
    if method == "prompt":  # RANDOM by default; SAMPLE_VOCAB copies random vocabulary rows
        init = str(getattr(kw.get("prompt_tuning_init"), "value", kw.get("prompt_tuning_init")))
        if init not in ("None", "RANDOM", "SAMPLE_VOCAB"):
            raise LabkitError(
                f"prompt_tuning_init for 'prompt' must be 'RANDOM' or 'SAMPLE_VOCAB', got {init!r}; "
                "a text init is the method 'prompt-text'"
            )
        kw["prompt_tuning_init"] = PromptTuningInit(init if init != "None" else "RANDOM")
        return PromptTuningConfig(task_type=task, **kw)
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


def attach(
    model_id: str, method: str, seed: int = 0, init_rms: float | None = None, **overrides: Any
):
    """A fresh base model wrapped for ``method`` (``full``: the base itself, all trainable).

    Always loads a new base: ``get_peft_model`` injects layers into the model it is given. The
    base is loaded in fp32 whatever dtype its checkpoint stores (a hub model saved in bf16 too).
    ``init_rms`` (``prompt-text`` only) rescales the text-initialised virtual tokens to that
    root-mean-square, keeping each row's direction: the text init at the scale of a random
    N(0, 1) init (``init_rms=1.0``), so that one learning rate moves both by the same fraction.
    """
    from peft import get_peft_model

    from labkit.models import zoo

    seed_value("seed", seed)
    check_decoder_only(model_id)  # an encoder (minilm) would get a new, untrained causal head
    if init_rms is not None:
        if method != "prompt-text":
            raise LabkitError(
                f"init_rms rescales a text init; accepted with 'prompt-text', not {method!r}"
            )
        ok = isinstance(init_rms, numbers.Real) and not isinstance(init_rms, bool)
        if not ok or not 0 < init_rms < float("inf"):
            raise LabkitError(f"init_rms must be a finite number > 0, got {init_rms!r}")
    config = None if method == "full" else make_config(method, model_id, **overrides)
    if method == "full" and overrides:
        raise LabkitError(f"'full' takes no peft options, got {', '.join(overrides)}")
    if getattr(config, "peft_type", None) is not None and _peft_type(config) == "LORA":
        _check_rank(config.r, lora_modules(model_id, config))  # before loading the model
    elif config is not None:
        check_virtual_tokens(config.num_virtual_tokens, model_id)
    torch.manual_seed(seed)
    # fp32 whatever the checkpoint stores: a hub model saved in bf16 would otherwise load in bf16
    # (transformers 5's dtype="auto") and train in another regime than the zoo model
    base = zoo.load_model(model_id, seed=seed, dtype=torch.float32)
    if method == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    if init_rms is not None:
        rows = model.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            rows.mul_(init_rms / rows.pow(2).mean().sqrt())
    return model


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 14, *, cached: bool = False
) -> list[str]:
    """Greedy answers decoded with the model's own forward pass, cut at the first newline.

    Each new token is the argmax of ``model(input_ids).logits`` over the whole sequence so far:
    the computation training optimised, with no ``generate()``. Without a KV cache (the default)
    every step re-runs the sequence: slow but faithful, which ``generate()`` is not for prefix
    tuning with peft 0.21 + transformers 5: cached, it drops the prefix; with ``use_cache=False``
    every step after the first differs from this forward pass (notebook 10). ``cached=True``
    decodes the same way with a KV cache, putting the virtual tokens in by hand once (see
    :func:`_cached_start`), so each later step runs one new position through the base model.
    Prompts of equal token length decode together, so no padding is needed.
    """
    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    answers = [""] * len(prompts)
    for length, idx in groups.items():
        ids = torch.tensor([encoded[i] for i in idx], device=device)
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        if cached:
            decoder, out, mask = _cached_start(model, ids)
        for _ in range(max_new_tokens):
            if cached:
                logits = out.logits[:, -1]
            else:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == tokenizer.eos_token_id
            if bool(done.all()):
                break
            if cached:  # one new position over everything already in the cache
                mask = torch.cat([mask, mask[:, :1]], dim=1)
                out = decoder(  # ``out.cache``: ``out.past_key_values`` logs a deprecation
                    input_ids=nxt[:, None], attention_mask=mask, cache=out.cache, use_cache=True
                )
        for row, i in zip(ids[:, length:], idx, strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers[i] = text.strip().split("\n")[0].strip()
    return answers


def _cached_start(model, ids: torch.Tensor):
    """The decoder that takes cached steps, its output on the prompt ``ids``, and the mask.

    A prompt-learning model's virtual tokens go in by hand, past peft 0.21's generation hook
    (which passes the cache as ``past_key_values`` where transformers 5.24 reads ``cache``):
    prompt tuning's and P-tuning's rows (``get_prompt``) in front of the token embeddings,
    prefix tuning's keys and values (``get_prompt``, a KV cache of ``n`` positions) as the cache
    the prompt starts from, as peft's own forward pass does. The base model then decodes.
    """
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):  # nothing virtual: the model as it is
        mask = torch.ones_like(ids)
        return model, model(input_ids=ids, attention_mask=mask, use_cache=True), mask
    base = model.get_base_model()
    n, rows = config.num_virtual_tokens, ids.shape[0]
    mask = torch.ones(rows, n + ids.shape[1], dtype=ids.dtype, device=ids.device)
    prompt = model.get_prompt(rows)
    if _peft_type(config) == "PREFIX_TUNING":
        out = base(input_ids=ids, attention_mask=mask, cache=prompt, use_cache=True)
    else:
        embeds = torch.cat([prompt.to(base.dtype), base.get_input_embeddings()(ids)], dim=1)
        out = base(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
    return base, out, mask


@torch.no_grad()
def generate_trace(
    model, tokenizer, prompt: str, *, use_cache: bool, max_new_tokens: int = 3
) -> list[dict[str, int]]:
    """What the base model receives at each ``generate()`` step: cached and new positions.

    One dict per forward call of the decoder under the LM head: ``cache``, the positions already
    in the KV cache handed to it (0 without one), and ``new``, the positions it runs now (input
    tokens or embeddings, virtual tokens included). Why: transformers 5.24 renamed the model's
    cache argument ``past_key_values`` to ``cache``, and peft 0.21's
    ``prepare_inputs_for_generation`` still reads and writes ``past_key_values``. So a faithful
    decode step runs 1 new position over the whole sequence in the cache; on this stack prompt
    tuning prepends its virtual tokens again at every cached step, and prefix tuning starts the
    cached path without its prefix (notebooks 08 and 10).
    """
    _check_module(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, "model", base)  # the decoder under the LM head
    trace: list[dict[str, int]] = []

    def record(_module, _args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen = kwargs.get("inputs_embeds")
        if seen is None:
            seen = kwargs.get("input_ids")
        cached = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
        trace.append({"cache": cached, "new": int(seen.shape[1])})

    enc = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    handle = body.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model.eval()
        model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        handle.remove()
    return trace


def _check_module(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise LabkitError(
            f"model must be a torch model, got {type(model).__name__}; accepted: e.g. "
            "attach(model_id, method) or zoo.load_model(name)"
        )


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of any model, peft's way (shared tensors once)."""
    _check_module(model)
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # deduplicated by torch
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def training_state_bytes(model: torch.nn.Module, optimizer=None, *, batch: dict) -> dict[str, int]:
    """Bytes of the training state a method adds, each read from real tensors: the trainable
    weights, their gradients and the optimizer state (activations are not included).

    The ``Trainer`` frees the gradients after every step, so they are measured here: one
    forward and backward pass on ``batch`` (a collated training batch), the bytes of every
    ``.grad`` summed (``labkit.memory.measure.state_bytes``), then freed again. The optimizer
    state is read from ``optimizer`` (after at least one step; AdamW keeps two moments per
    trainable number and one ``step`` counter per tensor).
    """
    from labkit.memory import measure

    _check_module(model)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise LabkitError(
            f"optimizer must be a torch optimizer (after at least one step), got {optimizer!r}; "
            "accepted: e.g. torch.optim.AdamW(model.parameters()), or None"
        )
    seen: set[int] = set()
    weights = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            weights += p.numel() * p.element_size()
    was_training = model.training
    model.zero_grad(set_to_none=True)
    model.train()
    model(**batch).loss.backward()
    grads = measure.state_bytes(model).gradients
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    opt = measure.state_bytes(model, optimizer).optimizer if optimizer is not None else 0
    return {"trainable weights": weights, "gradients": grads, "optimizer state": opt}
