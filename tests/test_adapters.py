"""Adapters: merge/unmerge/unload equality and save/load round trips, in the style of peft's tests.

Merge math does not need training: peft initialises LoRA B to zero (a no-op adapter), so these
tests randomise B (``init_lora_weights=False`` or :func:`adapters.randomize_lora`).
"""

import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from labkit import LabkitError
from labkit.models import zoo
from labkit.tuners import adapters, quantized_merge

ZOO_WEIGHTS = zoo.MODELS_DIR / "zoo-llama" / "model.safetensors"
needs_zoo = pytest.mark.skipif(not ZOO_WEIGHTS.exists(), reason="zoo-llama is not built yet")


def lora(model_name: str, seed: int = 0, **config) -> PeftModel:
    model = get_peft_model(zoo.load_model(model_name), LoraConfig(**config))
    adapters.randomize_lora(model, seed=seed)
    return model


# Families x adapter configurations: GQA + tied embeddings, Conv1D (fan_in_fan_out), fused qkv,
# rsLoRA, dropout, DoRA, embeddings, modules_to_save, bias.
CASES = {
    "qwen2-gqa-rslora-dropout-all-linear": (
        "tiny-qwen2",
        dict(r=4, lora_alpha=16, use_rslora=True, lora_dropout=0.1, target_modules="all-linear"),
    ),
    "gpt2-conv1d-fan_in_fan_out": (
        "tiny-gpt2",
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
    ),
    "gpt2-conv1d-dora": (
        "tiny-gpt2",
        dict(r=4, lora_alpha=8, target_modules=["c_fc"], fan_in_fan_out=True, use_dora=True),
    ),
    "bloom-fused-qkv-dora": (
        "tiny-bloom",
        dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense"], use_dora=True),
    ),
    "bloom-lora_only-bias": (
        "tiny-bloom",
        dict(r=2, lora_alpha=4, target_modules=["dense_h_to_4h"], bias="lora_only"),
    ),
    "llama-embedding-and-modules_to_save": (
        "tiny-llama",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "embed_tokens"],
            modules_to_save=["lm_head"],
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_round_trip_across_families(case, tmp_path):
    name, config = CASES[case]
    model = lora(name, **config)
    if config.get("modules_to_save"):
        with torch.no_grad():  # make the trained copy of lm_head differ from the original
            for pname, p in model.named_parameters():
                if "modules_to_save" in pname:
                    p.add_(0.05 * torch.randn_like(p))
    check, merged = adapters.check_merge_round_trip(model, atol=1e-4, folder=tmp_path)
    assert check.ok, check.summary()
    assert adapters.no_lora_layers_left(merged)
    assert "all checks hold" in check.summary()


@needs_zoo
def test_merge_round_trip_on_zoo_llama(tmp_path):
    model = lora("zoo-llama", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    check, _ = adapters.check_merge_round_trip(model, folder=tmp_path)
    check.assert_ok()
    assert check.hand_vs_peft <= 1e-6


@pytest.mark.parametrize(
    ("options", "formula"),
    [
        ({}, "W + (alpha/r)·B·A"),
        ({"use_rslora": True}, "W + (alpha/√r)·B·A"),
        ({"use_dora": True}, "m·(W+ΔW)/‖W+ΔW‖ (norm of each output row), ΔW = (alpha/r)·B·A"),
    ],
)
def test_merge_summary_names_the_formula_it_checked(options, formula):
    """A DoRA or rsLoRA merge is not labelled with plain LoRA's W + (alpha/r)·B·A."""
    model = lora("tiny-llama", r=2, lora_alpha=4, target_modules=["q_proj"], **options)
    layer = next(iter(adapters.lora_layers(model).values()))
    assert adapters.hand_formula(layer) == formula
    check, _ = adapters.check_merge_round_trip(model)
    assert check.formula == formula and f"peft merge vs {formula} by hand" in check.summary()


def test_a_no_op_adapter_fails_the_round_trip():
    """The check can fail: a fresh adapter (B = 0) does not change the logits."""
    model = get_peft_model(zoo.load_model("tiny-llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    check, _ = adapters.check_merge_round_trip(model)
    assert not check.ok
    assert any("adapter changes the logits" in f for f in check.failures())
    with pytest.raises(AssertionError, match="merged differs from base"):
        check.assert_ok()


def test_lora_delta_is_alpha_over_r_times_b_a():
    model = get_peft_model(
        zoo.load_model("tiny-llama"),
        LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False),
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.fill_(0.5)
        layer.lora_B["default"].weight.fill_(0.25)
    delta = adapters.lora_delta(layer)
    assert delta.shape == layer.get_base_layer().weight.shape
    assert torch.allclose(delta, torch.full_like(delta, 3.0 * 2 * 0.5 * 0.25))
    assert torch.allclose(delta, layer.get_delta_weight("default"))
    assert adapters.lora_scaling(layer) == 3.0
    with pytest.raises(LabkitError, match="no adapter 'other'"):
        adapters.lora_delta(layer, "other")


def test_merge_rounding_error_grows_as_the_update_shrinks():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, generator=g)
    delta = torch.randn(64, 8, generator=g) @ torch.randn(8, 64, generator=g)
    errors = [
        adapters.merge_rounding_error(weight, delta * ratio * weight.norm() / delta.norm())
        for ratio in (0.1, 0.01, 0.001)
    ]
    assert errors[0] < 0.05 < errors[1] < errors[2]  # bf16's 8 bits: small updates round away
    assert adapters.merge_rounding_error(weight, delta * 1e-3, torch.float32) < 1e-3
    with pytest.raises(LabkitError, match="differ"):
        adapters.merge_rounding_error(weight, delta[:8])
    with pytest.raises(LabkitError, match="all zeros"):
        adapters.merge_rounding_error(weight, torch.zeros_like(weight))
    with pytest.raises(LabkitError, match="floating-point"):
        adapters.merge_rounding_error(weight, delta, torch.int8)


def test_rslora_scaling_and_conv1d_layout():
    model = lora("tiny-gpt2", r=4, lora_alpha=8, use_rslora=True, target_modules=["c_attn"])
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert adapters.lora_scaling(layer) == pytest.approx(8 / math.sqrt(4))
    delta = adapters.lora_delta(layer)
    assert layer.fan_in_fan_out
    assert delta.shape == layer.get_base_layer().weight.shape == (64, 192)  # Conv1D: (in, out)
    assert torch.allclose(delta, layer.get_delta_weight("default"), atol=1e-7)
    assert adapters.hand_merge_max_diff(model) <= 1e-6


def test_adapter_save_load_round_trip_and_sizes(tmp_path):
    base_dir = tmp_path / "base"
    zoo.load_model("tiny-qwen2").save_pretrained(base_dir)
    model = get_peft_model(
        zoo.load_model(base_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    gap = adapters.check_adapter_round_trip(
        model, lambda: zoo.load_model(base_dir), tmp_path / "adapter"
    )
    assert gap == 0.0
    adapter_bytes = adapters.adapter_size_on_disk(tmp_path / "adapter")
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora * 4 <= adapter_bytes < n_lora * 4 + 16_384  # fp32 tensors + safetensors header
    assert adapter_bytes < adapters.weights_size_on_disk(base_dir) / 5
    with pytest.raises(LabkitError, match="adapter_config.json"):
        adapters.adapter_size_on_disk(base_dir)
    with pytest.raises(LabkitError, match="not a folder"):
        adapters.weights_size_on_disk(tmp_path / "missing")


def test_named_adapter_round_trip(tmp_path):
    base = zoo.load_model("tiny-llama")
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["v_proj"]), adapter_name="style")
    adapters.randomize_lora(model)
    gap = adapters.check_adapter_round_trip(
        model, lambda: zoo.load_model("tiny-llama"), tmp_path / "a"
    )
    assert gap == 0.0
    assert (tmp_path / "a" / "style" / "adapter_config.json").exists()


def test_no_lora_layers_left():
    plain = zoo.load_model("tiny-bloom")
    assert adapters.no_lora_layers_left(plain)
    model = lora("tiny-bloom", r=2, target_modules=["query_key_value"])
    assert not adapters.no_lora_layers_left(model)
    assert len(adapters.lora_layers(model)) == 2
    assert adapters.no_lora_layers_left(model.merge_and_unload())


def test_disable_adapter_gives_base_logits():
    base = zoo.load_model("tiny-qwen2")
    x = adapters.sample_inputs(base)
    base_logits = adapters.logits(base, x)
    model = lora("tiny-qwen2", r=4, target_modules=["q_proj", "o_proj"])
    assert not adapters.logits_close(model, base_logits, x)
    with model.disable_adapter():
        assert adapters.max_logit_diff(model, base_logits, x) == 0.0


def two_adapter_model() -> PeftModel:
    model = lora("tiny-llama", r=4, target_modules=["q_proj", "v_proj"])
    model.add_adapter("B", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapters.randomize_lora(model, "B", seed=1)
    return model


def test_mixed_batch_matches_each_adapter_alone():
    model = two_adapter_model()
    x = adapters.sample_inputs(model, batch=4)
    names = ["default", "B", adapters.BASE, "B"]
    for p in model.parameters():  # frozen, as after set_adapter(..., inference_mode=True)
        p.requires_grad_(False)
    mixed = adapters.mixed_batch_logits(model, x, names)
    alone = adapters.per_adapter_logits(model, x, names)
    assert not any(p.requires_grad for p in model.parameters())  # no adapter made trainable
    assert adapters.max_logit_diff(mixed, alone) <= 1e-5
    assert model.active_adapters == ["default"]  # restored
    assert adapters.max_logit_diff(mixed[:1], mixed[1:2]) > 1e-3  # rows really differ
    with pytest.raises(LabkitError, match="unknown adapter"):
        adapters.mixed_batch_logits(model, x, ["default", "nope", "B", "B"])
    with pytest.raises(LabkitError, match="one adapter name per row"):
        adapters.mixed_batch_logits(model, x, ["default"])


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("linear", {}),
        ("cat", {}),
        ("svd", {}),
        ("ties", {"density": 0.5}),
        ("dare_linear", {"density": 0.5}),
    ],
)
def test_combine_variants(kind, extra):
    model = two_adapter_model()
    x = adapters.sample_inputs(model)
    name = adapters.combine(model, ["default", "B"], [0.5, 0.5], kind, **extra)
    assert model.active_adapters == [name]
    assert not any(p.requires_grad for p in model.parameters())  # made active frozen
    combined = adapters.logits(model, x)
    model.set_adapter("default")
    assert adapters.max_logit_diff(combined, adapters.logits(model, x)) > 1e-4


def test_combine_again_under_the_active_name_replaces_it_quietly():
    """Re-combining under the name of the active adapter (a weight sweep) replaces it without
    peft's "was active which is now deleted" warning from every layer."""
    import warnings

    model = two_adapter_model()
    adapters.combine(model, ["default", "B"], [0.25, 0.75], "linear", name="sweep")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        adapters.combine(model, ["default", "B"], [0.75, 0.25], "linear", name="sweep")
    assert model.active_adapters == ["sweep"] and list(model.peft_config).count("sweep") == 1


def test_linear_combines_the_factors_and_is_not_the_weighted_sum_of_the_updates():
    """peft's linear mixes A's and B's separately (sqrt(w*s) on each), so its B·A holds cross
    terms; cat is exactly the weighted sum of the ΔW's."""
    model = two_adapter_model()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    target = 0.5 * adapters.lora_delta(layer, "default") + 0.5 * adapters.lora_delta(layer, "B")
    for kind in ("linear", "cat"):
        adapters.combine(model, ["default", "B"], [0.5, 0.5], kind, name=kind)
    error = {
        k: float((adapters.lora_delta(layer, k) - target).norm() / target.norm())
        for k in ("linear", "cat")
    }
    assert error["cat"] < 1e-5 < 0.1 < error["linear"]


def test_cat_of_two_adapters_with_weight_one_is_their_sum():
    model = two_adapter_model()
    adapters.combine(model, ["default", "B"], [1.0, 1.0], "cat", name="both")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    summed = adapters.lora_delta(layer, "default") + adapters.lora_delta(layer, "B")
    assert torch.allclose(adapters.lora_delta(layer, "both"), summed, atol=1e-6)
    assert layer.r["both"] == 8


def test_combination_constraints_are_errors():
    model = two_adapter_model()
    model.add_adapter("r2", LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    line = adapters.error_line(
        model.add_weighted_adapter, ["default", "r2"], [1.0, 1.0], "x", combination_type="linear"
    )
    assert line.startswith("ValueError") and "same r" in line
    adapters.combine(model, ["default", "r2"], [1.0, 1.0], "cat")  # cat accepts unequal ranks
    with pytest.raises(LabkitError, match="did not raise"):
        adapters.error_line(lambda: None)
    with pytest.raises(LabkitError, match="one weight per adapter"):
        adapters.combine(model, ["default", "B"], [1.0], "linear")


def test_modules_to_save_blocks_combination():
    cfg = dict(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = lora("tiny-llama", **cfg)
    model.add_adapter("B", LoraConfig(**cfg))
    line = adapters.error_line(
        model.add_weighted_adapter, ["default", "B"], [1.0, 1.0], "x", combination_type="linear"
    )
    assert "modules_to_save" in line


def test_quantized_merge_rounding_and_recipe(tmp_path):
    zoo.load_model("tiny-llama").save_pretrained(tmp_path / "base")
    model = lora("tiny-llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model.save_pretrained(tmp_path / "adapter")
    result = quantized_merge.check_quantized_merge(
        tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", dtype=torch.float32
    )
    assert result.adapter_effect > 1e-2
    assert result.dequantized_merge <= 1e-4  # exact: same weights the adapter saw
    assert result.naive_merge > 100 * max(result.dequantized_merge, 1e-6)  # 4-bit rounding
    assert result.original_base_merge > 1e-3  # the base's quantization error comes back
    assert result.requantized_merge > 1e-3
    assert "re-quantize" in result.summary()
    assert "max logit gap" in result.summary() and "|route - served|" in result.summary()
    assert result.positions == 3 * 12 - 3  # sample_inputs: 3 rows of 12, the last 3 padded
    assert result.changed["dequantized merge"] <= 1e-4 < result.changed["4-bit merge"]
    assert "float32 compute" in result.regime and result.scores == {}
    assert "no double quantization" in result.regime  # the NF4 setting the numbers come from
    scored = quantized_merge.check_quantized_merge(
        tmp_path / "base", tmp_path / "adapter", tmp_path / "merged2",
        compute_dtype=torch.bfloat16, score=lambda m: float(m.config.vocab_size),
    )  # fmt: skip
    assert "bfloat16 compute" in scored.regime
    assert set(scored.scores) == {"served (4-bit + adapter)", *quantized_merge.ROUTES}


def test_keep_cpu_4bit_layout(tmp_path):
    zoo.load_model("tiny-gpt2").save_pretrained(tmp_path)
    q = zoo.load_model(tmp_path, quantization_config=quantized_merge.bnb_4bit_config())
    # c_attn, c_proj, c_fc, mlp.c_proj x 2 layers
    assert quantized_merge.keep_cpu_4bit_layout(q) == 8
    with pytest.raises(LabkitError, match="nf4, fp4"):
        quantized_merge.bnb_4bit_config("int3")
    assert not quantized_merge.bnb_4bit_config().bnb_4bit_use_double_quant
    assert quantized_merge.bnb_4bit_config(double_quant=True).bnb_4bit_use_double_quant
    with pytest.raises(LabkitError, match="double_quant must be True or False"):
        quantized_merge.bnb_4bit_config(double_quant="yes")


def test_bad_inputs_are_labkit_errors():
    with pytest.raises(LabkitError, match="vocab_size >= 4"):
        adapters.sample_inputs(2)
    x = adapters.sample_inputs(100, batch=2, seq=6)
    assert x["attention_mask"][-1].tolist() == [1, 1, 1, 1, 1, 0]
    with pytest.raises(LabkitError, match="shapes differ"):
        adapters.max_logit_diff(torch.zeros(2), torch.zeros(3))
    with pytest.raises(LabkitError, match="inputs are needed"):
        adapters.max_logit_diff(zoo.load_model("tiny-gpt2"), torch.zeros(1))
    with pytest.raises(LabkitError, match="LoRA layers"):
        adapters.check_merge_round_trip(zoo.load_model("tiny-gpt2"))


@needs_zoo
def test_generate_mixed_matches_one_adapter_at_a_time():
    from labkit.training import finetune

    tok = zoo.load_tokenizer("zoo-llama")
    model = lora("zoo-llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model.add_adapter("B", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapters.randomize_lora(model, "B", seed=1, std=0.5)
    prompts = [
        "Human: Where does the fox live?\nAssistant:",
        "Human: What colour is snow?\nAssistant:",
    ]
    names = ["B", adapters.BASE]
    mixed = adapters.generate_mixed(model, tok, prompts, names, max_new_tokens=6)
    model.set_adapter("B")
    alone_b = finetune.generate_answers(model, tok, prompts[:1], max_new_tokens=6)
    with model.disable_adapter():
        alone_base = finetune.generate_answers(model, tok, prompts[1:], max_new_tokens=6)
    assert mixed == alone_b + alone_base


def test_generate_mixed_uses_the_same_token_budget_as_generate_answers():
    """A mixed batch's row is compared with the adapter's answer alone: same max_new_tokens."""
    import inspect

    from labkit.training import finetune

    def default(fn):
        return inspect.signature(fn).parameters["max_new_tokens"].default

    assert default(adapters.generate_mixed) == default(finetune.generate_answers)
