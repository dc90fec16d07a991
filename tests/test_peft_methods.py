"""labkit.tuners.peft_methods: the formula count equals peft's own count; discovery helpers; configs."""

import copy
import logging
import warnings

import pytest
import torch
from peft import (
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from transformers import AutoModelForCausalLM, LlamaConfig

from labkit import LabkitError
from labkit.models import zoo
from labkit.tuners import peft_methods

TINY = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bloom"]
ATTN = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["k_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
}


def _configs(model_type: str) -> dict:
    attn = ATTN[model_type]
    lora = {"task_type": "CAUSAL_LM"}
    return {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7),
        "p-mlp": PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=48
        ),
        "p-mlp-default-e": PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        "p-lstm": PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=5,
            encoder_reparameterization_type="LSTM",
            encoder_hidden_size=40,
            encoder_num_layers=3,
        ),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6),
        "prefix-proj": PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=6, prefix_projection=True
        ),
        "prefix-proj-e": PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=6,
            prefix_projection=True,
            encoder_hidden_size=33,
        ),
        "lora-default": LoraConfig(r=3, **lora),
        "lora-list-mts": LoraConfig(r=5, target_modules=attn, modules_to_save=["lm_head"], **lora),
        "lora-all-linear-bias": LoraConfig(r=2, target_modules="all-linear", bias="all", **lora),
        "lora-regex-dora": LoraConfig(
            r=2,
            target_modules=r".*\.(1|0)\..*(proj|c_attn|dense)",
            bias="lora_only",
            use_dora=True,
            **lora,
        ),
        "lora-layers-rank-pattern": LoraConfig(
            r=4,
            target_modules=attn,
            layers_to_transform=[1],
            rank_pattern={attn[0]: 7},
            lora_bias=True,
            **lora,
        ),
        "lora-exclude-mts-block": LoraConfig(
            r=4,
            target_modules="all-linear",
            exclude_modules=attn[:1],
            modules_to_save=["mlp"],
            **lora,
        ),
        "lora-embedding": LoraConfig(
            r=3, target_modules=["embed_tokens", "wte", "word_embeddings"]
        ),
    }


CASES = [(name, key) for name in TINY for key in _configs("llama")]


@pytest.mark.parametrize(("name", "key"), CASES)
def test_count_equals_peft_on_tiny_models(name, key):
    config = zoo.load_config(name)
    peft_config = _configs(config.model_type)[key]
    expected = peft_methods.count_trainable(peft_config, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(zoo.load_model(name), copy.deepcopy(peft_config))
    assert expected == model.get_nb_trainable_parameters()[0]
    # and again with the config peft has filled in (token_dim etc. set in place)
    assert peft_methods.count_trainable(model.peft_config["default"], config) == expected


@pytest.mark.parametrize(
    ("name", "peft_config"),
    [
        ("llama-3.1-8b", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)),
        ("mistral-7b", LoraConfig(r=4, target_modules=r".*mlp\.(up|down)_proj")),
        ("qwen2.5-0.5b", LoraConfig(r=16, target_modules="all-linear")),
        ("gpt2", LoraConfig(r=8, modules_to_save=["lm_head"])),
        (
            "bloom-1b1",
            PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True),
        ),
    ],
)
def test_count_equals_peft_on_catalog_configs_on_meta_device(name, peft_config):
    config = zoo.load_config(name)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = get_peft_model(AutoModelForCausalLM.from_config(config), copy.deepcopy(peft_config))
    assert (
        peft_methods.count_trainable(peft_config, config) == model.get_nb_trainable_parameters()[0]
    )


def test_facts_md_figures():
    llama2 = zoo.load_config("llama-2-7b")
    assert (
        peft_methods.count_trainable(LoraConfig(r=8, target_modules=["q_proj", "v_proj"]), llama2)
        == 4_194_304
    )
    llama32_1b = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    assert (
        peft_methods.count_trainable(LoraConfig(r=8, target_modules=["q_proj"]), llama32_1b)
        == 524_288
    )
    bloom = zoo.load_config("bloom-560m")  # bloomz-560m has the same architecture
    assert peft_methods.count_trainable(PromptTuningConfig(num_virtual_tokens=8), bloom) == 8_192
    assert peft_methods.count_trainable(PrefixTuningConfig(num_virtual_tokens=20), bloom) == 983_040
    p_tuning = PromptEncoderConfig(num_virtual_tokens=20, encoder_hidden_size=128)
    assert peft_methods.count_trainable(p_tuning, bloom) == 300_288


def test_prefix_projection_formula_and_gqa_shapes():
    h, layers, n, e = 1024, 24, 20, 128
    bloom = zoo.load_config("bloom-560m")
    cfg = PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=True, encoder_hidden_size=e)
    assert peft_methods.count_trainable(cfg, bloom) == n * h + (h * e + e) + (
        e * 2 * layers * h + 2 * layers * h
    )
    # GQA: Llama-3.1-8B's prefixes hold n_kv * head_dim = 8 * 128 values per layer and key/value
    llama3 = zoo.load_config("llama-3.1-8b")
    assert (
        peft_methods.prompt_dims(PrefixTuningConfig(num_virtual_tokens=1), llama3)["token_dim"]
        == 1024
    )
    assert (
        peft_methods.count_trainable(PrefixTuningConfig(num_virtual_tokens=1), llama3)
        == 32 * 2 * 1024
    )


def test_count_does_not_modify_the_config_and_terms_add_up():
    cfg = PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True)
    terms = peft_methods.count_terms(cfg, zoo.load_config("tiny-qwen2"))
    assert cfg.token_dim is None and cfg.encoder_hidden_size is None
    assert sum(terms.values()) == peft_methods.count_trainable(cfg, "tiny-qwen2")
    assert len(terms) == 3


def test_lora_terms_name_how_many_modules_they_sum():
    config = zoo.load_config("tiny-llama")
    terms = peft_methods.count_terms(LoraConfig(r=4, target_modules=["q_proj"]), config)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    q_out = config.num_attention_heads * (config.head_dim or hidden // config.num_attention_heads)
    assert terms == {f"{layers} x q_proj: r*(d_in+d_out)": layers * 4 * (hidden + q_out)}
    one = LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=[0])
    assert list(peft_methods.count_terms(one, config)) == ["1 x q_proj: r*(d_in+d_out)"]


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(LabkitError, match="matches no module"):
        peft_methods.count_trainable(LoraConfig(target_modules=["nope"]), "tiny-llama")
    with pytest.raises(LabkitError, match="not a Linear"):
        peft_methods.count_trainable(LoraConfig(target_modules=r".*self_attn"), "tiny-llama")
    from peft import IA3Config

    with pytest.raises(LabkitError, match="unsupported peft config"):
        peft_methods.count_trainable(IA3Config(), "tiny-llama")
    with pytest.raises(LabkitError, match="expected a transformers config"):
        peft_methods.count_trainable(LoraConfig(), 42)
    with pytest.raises(LabkitError, match="unknown PEFT method"):
        peft_methods.make_config("adapter")


@pytest.mark.parametrize("method", [m for m in peft_methods.PEFT_METHODS if m != "full"])
def test_make_config_and_attach_match_the_count(method):
    model = peft_methods.attach("tiny-llama", method)
    config = model.peft_config["default"]
    assert peft_methods.trainable_parameters(model)[0] == peft_methods.count_trainable(
        config, model.config
    )
    assert peft_methods.trainable_parameters(model)[0] > 0


def test_attach_full_trains_everything():
    model = peft_methods.attach("tiny-qwen2", "full")
    trainable, total = peft_methods.trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_attach_loads_a_bf16_hub_checkpoint_in_fp32(tmp_path, method):
    """A hub model saved in bf16 with tied embeddings (Qwen2.5's layout) trains in the course's
    fp32 regime, not in the checkpoint's bf16 (transformers 5 loads dtype="auto" by default)."""
    zoo.load_model("tiny-qwen2").to(torch.bfloat16).save_pretrained(tmp_path)
    zoo.load_tokenizer("zoo-llama").save_pretrained(tmp_path)
    model = peft_methods.attach(str(tmp_path), method)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_attach_init_rms_keeps_the_text_directions_at_the_new_scale():
    text = peft_methods.attach("zoo-llama", "prompt-text")
    scaled = peft_methods.attach("zoo-llama", "prompt-text", init_rms=1.0)
    a = text.prompt_encoder["default"].embedding.weight.detach()
    b = scaled.prompt_encoder["default"].embedding.weight.detach()
    assert b.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    ratio = b / a  # one factor for every coordinate: every row keeps its direction
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
    assert ratio.flatten()[0] > 10  # text rows are as small as token embeddings
    for bad in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(LabkitError, match="init_rms must be a finite number > 0"):
            peft_methods.attach("zoo-llama", "prompt-text", init_rms=bad)
    with pytest.raises(LabkitError, match="accepted with 'prompt-text', not 'prompt'"):
        peft_methods.attach("zoo-llama", "prompt", init_rms=1.0)


def test_prompt_sample_vocab_init_copies_vocabulary_rows():
    """``prompt_tuning_init="SAMPLE_VOCAB"`` (Lester et al.'s sampled-vocabulary init): every
    virtual token starts as a real token's embedding, at the embedding's scale, not N(0, 1)."""
    vocab = peft_methods.attach("zoo-llama", "prompt", prompt_tuning_init="SAMPLE_VOCAB")
    assert peft_methods.make_config("prompt").prompt_tuning_init == "RANDOM"
    rows = vocab.prompt_encoder["default"].embedding.weight.detach()
    emb = vocab.get_input_embeddings().weight.detach()
    assert all(bool((emb == row).all(dim=1).any()) for row in rows)
    assert rows.pow(2).mean().sqrt().item() < 0.2  # N(0, 1) rows have RMS ~1
    with pytest.raises(LabkitError, match="'RANDOM' or 'SAMPLE_VOCAB', got 'TEXT'"):
        peft_methods.make_config("prompt", prompt_tuning_init="TEXT")


@pytest.mark.parametrize("method", ["prefix", "lora", "full"])
def test_training_state_bytes_measures_real_gradients(method):
    """Weights 4 B, gradients 4 B (measured after one backward, not sized from the weights) and
    AdamW 8 B per trainable fp32 number plus one 4-byte step counter per trainable tensor."""
    from labkit.data import loaders
    from labkit.training import finetune

    tok = zoo.load_tokenizer("tiny-llama")
    model = peft_methods.attach("tiny-llama", method)
    batch = finetune.ChatCollator(tok.pad_token_id)(
        finetune.chat_features(tok, loaders.load_chat("train")[:4])
    )
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-3)
    model(**batch).loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    state = peft_methods.training_state_bytes(model, opt, batch=batch)
    assert state == {
        "trainable weights": 4 * n,
        "gradients": 4 * n,
        "optimizer state": 8 * n + 4 * len(params),
    }
    assert all(p.grad is None for p in model.parameters())  # freed again
    if len(params) > 1:  # a tensor frozen after the fact gets no gradient, and is not counted
        params[0].requires_grad_(False)
        state = peft_methods.training_state_bytes(model, batch=batch)
        assert state["gradients"] == 4 * sum(p.numel() for p in params[1:])


@pytest.mark.parametrize("method", ["full", "prompt", "p-tuning-mlp", "lora", "prefix"])
def test_greedy_answers_is_the_forward_pass_and_generate_is_not_for_prefix(method):
    """``greedy_answers`` decodes with the model's forward pass, with a KV cache
    (``cached=True``) or without, to the same answers. ``generate_answers`` agrees with it for
    every method but prefix tuning, whose uncached generate() drifts after the first token on
    peft 0.21 + transformers 5 (even with an untrained prefix): if this starts failing for
    "prefix", the stack was fixed and notebook 10's caveat can go."""
    from labkit.data import loaders
    from labkit.training import finetune

    tok = zoo.load_tokenizer("zoo-llama")
    model = peft_methods.attach("zoo-llama", method)
    prompts = [r["prompt"] for r in loaders.load_chat("test")[:12]]
    greedy = peft_methods.greedy_answers(model, tok, prompts)
    first = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the first answer token is the forward pass's argmax
        top = int(
            model(input_ids=first, attention_mask=torch.ones_like(first)).logits[0, -1].argmax()
        )
    assert greedy[0].startswith(tok.decode([top]).strip())
    generated = finetune.generate_answers(model, tok, prompts)
    same = sum(a == b for a, b in zip(greedy, generated, strict=True))
    assert (same < len(prompts)) if method == "prefix" else (same == len(prompts))
    assert peft_methods.greedy_answers(model, tok, prompts, cached=True) == greedy
    if method not in ("full", "lora"):  # the virtual tokens change answers: dropping them fails
        plain = peft_methods.greedy_answers(model.get_base_model(), tok, prompts)
        assert plain != greedy


@pytest.mark.parametrize("method", ["full", "prompt", "prefix"])
def test_cached_greedy_answers_logs_no_deprecation(method, caplog):
    """``greedy_answers(cached=True)`` reads the step's cache as ``out.cache``: transformers 5's
    ``out.past_key_values`` logs "`past_key_values`/`cache_params` are deprecated" (a logger
    warning, not a Python warning). The logger is set to WARNING and its once-only cache cleared,
    so the test fails if the deprecated name comes back; reading it here shows the capture works."""
    from transformers.utils import logging as hf_logging

    tok = zoo.load_tokenizer("zoo-llama")
    model = peft_methods.attach("zoo-llama", method)
    prompt = "Human: Where does the fox live?\nAssistant:"
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.enable_propagation()  # so pytest's caplog (a root handler) sees the records
    try:
        hf_logging.warning_once.cache_clear()
        with caplog.at_level(logging.WARNING, logger="transformers"):
            peft_methods.greedy_answers(model, tok, [prompt], 3, cached=True)
        assert not [r for r in caplog.records if "deprecated" in r.getMessage()], caplog.text
        hf_logging.warning_once.cache_clear()
        with caplog.at_level(logging.WARNING, logger="transformers"):  # the capture sees it
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            _ = base(input_ids=ids, use_cache=True).past_key_values
        assert any("deprecated" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        hf_logging.disable_propagation()
        hf_logging.set_verbosity(before)


def test_generate_trace_shows_the_cache_name_peft_and_transformers_disagree_on():
    """transformers 5.24 reads the cache as ``cache``, peft 0.21's generation hook as
    ``past_key_values``. A faithful cached step runs 1 new position (the base model's trace);
    prompt tuning prepends its virtual tokens again, prefix tuning's cached path starts with
    no prefix and its uncached path is handed stale keys. If a release fixes the name, the
    prompt / prefix assertions fail and notebooks 08 and 10 must change their caveat."""
    tok = zoo.load_tokenizer("zoo-llama")
    prompt = "Human: Where does the fox live?\nAssistant:"
    p = tok(prompt, return_tensors="pt")["input_ids"].shape[1]
    base = peft_methods.attach("zoo-llama", "lora")
    assert peft_methods.generate_trace(base, tok, prompt, use_cache=True) == [
        {"cache": 0, "new": p},
        {"cache": p, "new": 1},
        {"cache": p + 1, "new": 1},
    ]
    assert [s["new"] for s in peft_methods.generate_trace(base, tok, prompt, use_cache=False)] == [
        p,
        p + 1,
        p + 2,
    ]
    prompt_tuned = peft_methods.attach("zoo-llama", "prompt")
    n = prompt_tuned.peft_config["default"].num_virtual_tokens
    cached = peft_methods.generate_trace(prompt_tuned, tok, prompt, use_cache=True)
    assert cached[0] == {"cache": 0, "new": n + p} and cached[1]["new"] == n + 1
    uncached = peft_methods.generate_trace(prompt_tuned, tok, prompt, use_cache=False)
    assert [s["new"] for s in uncached] == [n + p, n + p + 1, n + p + 2]
    assert all(s["cache"] == 0 for s in uncached)
    prefix = peft_methods.attach("zoo-llama", "prefix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "both past_key_values and cache set"
        cached = peft_methods.generate_trace(prefix, tok, prompt, use_cache=True)
        uncached = peft_methods.generate_trace(prefix, tok, prompt, use_cache=False)
    assert cached[0] == {"cache": 0, "new": p}  # the prefix is not in the cache
    assert uncached[0] == {"cache": n, "new": p}  # the first step is right
    assert uncached[1] == {"cache": n + p, "new": p + 1}  # then stale copies of the prompt
    with pytest.raises(LabkitError, match="torch model"):
        peft_methods.generate_trace("zoo-llama", tok, prompt, use_cache=True)
