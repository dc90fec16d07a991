"""labkit.memory.estimator, labkit.models.architecture and labkit.memory.activations: exact counts
against real (meta-device) models and the published figures in docs/formulas.md."""

import math

import pytest

from labkit import LabkitError
from labkit.memory import activations, estimator
from labkit.memory.job import TrainingJob
from labkit.models import architecture, targets


def test_kv_cache_matches_facts_and_gqa_is_4x_smaller():
    assert estimator.kv_cache_bytes("llama-3.1-8b", 1, 1, "bf16") == 128 * 2**10
    assert estimator.kv_cache_bytes("llama-3.1-8b", 1, 8192, "bf16") == 2**30
    assert estimator.kv_cache_bytes("llama-2-7b", 1, 8192) == 4 * 2**30  # MHA: 32 KV heads


def test_weight_bytes_by_dtype_and_nf4_bits():
    P = architecture.count_parameters("llama-2-7b")
    assert estimator.weight_bytes("llama-2-7b", "fp32") == 4 * P
    assert estimator.weight_bytes("llama-2-7b", "bf16") == 2 * P
    n = 64 * 256 * 100
    assert estimator.nf4_bytes(n) * 8 / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert estimator.weight_bytes("llama-2-7b", "int8") < estimator.weight_bytes(
        "llama-2-7b", "bf16"
    )
    assert estimator.weight_bytes("llama-2-7b", "nf4") < estimator.weight_bytes(
        "llama-2-7b", "int8"
    )


def test_unquantized_share_is_embeddings_norms_and_head():
    """llama-2-7b: two 32000 x 4096 matrices (embedding, untied head) plus 65 norms of 4096."""
    P = architecture.count_parameters("llama-2-7b")
    assert estimator.unquantized_share("llama-2-7b") == pytest.approx(
        (2 * 32000 * 4096 + 65 * 4096) / P
    )
    assert 0.03 < estimator.unquantized_share("llama-2-7b") < 0.05


def test_quantized_ratio_keeps_the_rest_in_the_base_dtype():
    P = architecture.count_parameters("llama-2-7b")
    rest = estimator.unquantized_share("llama-2-7b") * P
    in_bf16 = estimator.weight_bytes("llama-2-7b", "int8") / estimator.weight_bytes("llama-2-7b")
    assert estimator.quantized_ratio("llama-2-7b", "int8", "bf16") == pytest.approx(in_bf16)
    assert estimator.quantized_ratio("llama-2-7b", "int8", "fp32") == pytest.approx(
        (estimator.weight_bytes("llama-2-7b", "int8") + 2 * rest) / (4 * P)
    )
    assert 0.25 < estimator.quantized_ratio("llama-2-7b", "int8", "fp32") < 0.3
    assert estimator.quantized_ratio("llama-2-7b", "nf4", "fp32") < 0.2
    with pytest.raises(LabkitError, match="base dtype"):
        estimator.quantized_ratio("llama-2-7b", "int8", "int8")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])  # untied and tied embeddings
def test_from_pretrained_without_dtype_loads_the_dtype_the_config_names(tmp_path, name):
    """transformers 5 defaults ``from_pretrained`` to ``dtype="auto"``: a checkpoint saved in bf16
    loads in bf16, not fp32 (transformers 4's default); ``weight_bytes(config, "auto")`` is the
    model as loaded."""
    import torch
    from transformers import AutoModelForCausalLM

    from labkit.models import zoo

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(zoo.load_config(name), dtype=torch.bfloat16).save_pretrained(
        tmp_path
    )
    assert zoo.load_config(tmp_path).dtype == torch.bfloat16  # config.json names bfloat16
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no dtype=
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    as_loaded = sum(p.numel() * p.element_size() for p in loaded.parameters())
    assert estimator.loaded_dtype(tmp_path) == "bf16"
    assert estimator.weight_bytes(tmp_path, "auto") == as_loaded
    assert estimator.weight_bytes(tmp_path, "bf16") == as_loaded
    fp32 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert estimator.loaded_dtype("zoo-llama") == "fp32"  # the zoo model's config says float32


def test_loaded_dtype_refuses_a_config_that_names_none():
    with pytest.raises(LabkitError, match="names no weight dtype"):
        estimator.loaded_dtype("llama-2-7b")  # the catalog configs carry architecture only
    with pytest.raises(LabkitError, match="unknown weight dtype"):
        estimator.weight_bytes("zoo-llama", "float64")


def test_int8_keeps_embeddings_head_and_norms_in_16_bit():
    """LLM.int8 quantizes the block linears (1 byte each + one fp32 scale per output row); the
    embeddings, the output head and the norms stay 16-bit, as bitsandbytes leaves them."""
    linears = {f"{m.name}.weight": m for m in targets.block_linears("llama-2-7b")}
    want = 0
    for name, shape in architecture.param_shapes("llama-2-7b").items():
        n = math.prod(shape)
        want += n + 4 * linears[name].d_out if name in linears else 2 * n
    assert estimator.weight_bytes("llama-2-7b", "int8") == want
    assert 6.9e9 < want < 7.1e9  # about 7.0 GB, not 6.74 (= 1 byte for every parameter)


def test_training_bytes_per_param_follow_the_precision():
    kw = dict(batch=1, seq=8)
    fp32 = estimator.training_memory("llama-2-7b", precision="fp32", **kw)
    mixed = estimator.training_memory("llama-2-7b", precision="bf16-mixed", **kw)
    pure = estimator.training_memory("llama-2-7b", precision="bf16", **kw)
    P = fp32.parameters
    n_tensors = len(architecture.param_shapes("llama-2-7b"))
    states = lambda b: b.weights + b.gradients + b.optimizer  # noqa: E731
    assert states(fp32) == 16 * P + 4 * n_tensors
    shapes = architecture.param_shapes("llama-2-7b")
    cast = estimator.autocast_cast_parameters("llama-2-7b", shapes)
    one_block = estimator.autocast_cast_parameters("llama-2-7b", shapes, checkpointing=True)
    assert one_block == 32000 * 4096 + (cast - 32000 * 4096) // 32  # the head + one block
    emb = 32000 * 4096
    assert cast == P - emb - 4096 * (2 * 32 + 1)  # all but the embedding matrix and the norms
    assert states(mixed) == 16 * P + 2 * cast + 4 * n_tensors  # just under HF's 18 B/param
    assert states(pure) == 8 * P + 4 * n_tensors
    assert mixed.total == states(mixed) + mixed.activations + mixed.logits + mixed.transient


def test_optimizer_bytes_per_family():
    shapes = {"w": (300, 200), "b": (200,)}
    assert estimator.optimizer_bytes(shapes, "sgd") == 4 * 60_200
    assert estimator.optimizer_bytes(shapes, "adafactor") == 4 * (300 + 200 + 200) + 2 * 4
    # transformers' Adafactor casts a 16-bit gradient to fp32 before it makes its state
    assert estimator.optimizer_bytes(shapes, "adafactor", 2) == 4 * (300 + 200 + 200) + 2 * 4
    big = 2 * 60_000 + 8 * math.ceil(60_000 / 256)
    assert estimator.optimizer_bytes(shapes, "adamw8bit") == big + 8 * 200 + 2048


def test_lora_and_qlora_shrink_states_and_activations():
    kw = dict(batch=2, seq=256, precision="bf16-mixed")
    full = estimator.training_memory("llama-2-7b", **kw)
    lora = estimator.training_memory("llama-2-7b", method="lora", **kw)  # bf16 base (default)
    lora32 = estimator.training_memory("llama-2-7b", method="lora", base_dtype="fp32", **kw)
    qlora = estimator.training_memory("llama-2-7b", method="qlora", **kw)
    assert lora.trainable_parameters == 4_194_304 == qlora.trainable_parameters
    assert qlora.weights < lora.weights / 3 < lora32.weights / 6 < full.weights
    # QLoRA's NF4 base is sized with double quantization, and its regime says so
    nf4 = {dq: estimator.weight_bytes("llama-2-7b", "nf4", double_quant=dq) for dq in (True, False)}
    assert nf4[True] < qlora.weights < nf4[False]
    assert "NF4 base (double quantization)" in qlora.details["regime"]
    # under autocast QLoRA's adapters compute in bf16 as LoRA's on a bf16 base: the same saved
    # tensors and the same cached bf16 copies of the adapters; without autocast, fp32 copies
    assert qlora.activations == lora.activations and "bf16 autocast" in qlora.details["regime"]
    assert qlora.weights - nf4[True] == lora.weights - estimator.weight_bytes("llama-2-7b", "bf16")
    pure = {m: estimator.training_memory("llama-2-7b", method=m, **{**kw, "precision": "bf16"})
            for m in ("lora", "qlora")}  # fmt: skip
    assert pure["qlora"].activations == pure["lora"].activations > qlora.activations
    assert lora.gradients == 4 * 4_194_304 == lora32.gradients
    # a frozen linear keeps no input, but norms, attention and the MLP products still do
    assert full.activations / 2 < lora.activations < full.activations
    # GPT-2 too: adapting c_attn keeps less than full fine-tuning, but adapting every linear keeps
    # more, as each fp32 adapter keeps its own fp32 copy of its 16-bit input
    gpt2_full = estimator.training_memory("gpt2", **kw)
    gpt2_lora = estimator.training_memory("gpt2", method="lora", lora_targets="c_attn", **kw)
    gpt2_all = estimator.training_memory("gpt2", method="lora", lora_targets="all-linear", **kw)
    assert gpt2_lora.activations < gpt2_full.activations < gpt2_all.activations


def test_job_activation_bytes_bad_input():
    def lora(config, **options):
        return activations.job_activation_bytes(
            config, TrainingJob(method="lora", batch=1, seq=8, **options)
        )

    with pytest.raises(LabkitError, match="not supported") as err:
        lora({"model_type": "t5", "vocab_size": 8})
    assert "\n" not in str(err.value)
    with pytest.raises(LabkitError, match="unknown LoRA target"):
        lora("gpt2", lora_targets="q_proj,v_proj")  # Llama names on GPT-2
    with pytest.raises(LabkitError, match="no SDPA"):
        lora("tiny-bloom", lora_targets="query_key_value", attention="sdpa")
    with pytest.raises(LabkitError, match="LoRA rank"):
        lora("tiny-llama", lora_r=0)
    with pytest.raises(LabkitError, match="unknown LoRA target"):
        lora("tiny-llama", lora_targets="c_attn")
    with pytest.raises(LabkitError, match="adapter dtype"):
        lora("tiny-llama", adapter_dtype="int8")
    with pytest.raises(LabkitError, match="frozen_layers must be between 0 and 2, got 3"):
        activations.job_activation_bytes(
            "tiny-llama", TrainingJob(method="frozen", frozen_layers=3)
        )


def test_frozen_layers_and_checkpointing_cut_activations():
    base = activations.activation_bytes("llama-2-7b", 1, 1024, "bf16", "sdpa")
    ckpt = activations.activation_bytes("llama-2-7b", 1, 1024, "bf16", "sdpa", checkpointing=True)
    frozen = TrainingJob(method="frozen", frozen_layers=16, precision="bf16", seq=1024)
    half = activations.job_activation_bytes("llama-2-7b", frozen)
    assert ckpt.activations < base.activations / 5
    assert half.activations == pytest.approx(base.activations / 2, rel=0.02)
    eager = activations.activation_bytes("llama-2-7b", 1, 1024, "bf16", "eager")
    assert eager.activations - base.activations > 32 * 32 * 1024**2 * 4  # the a·s² terms


def test_logits_dominate_for_small_models_with_large_vocab():
    acts = activations.activation_bytes("qwen2.5-0.5b", 1, 4096, "bf16", "sdpa", checkpointing=True)
    assert acts.logits > acts.activations
    assert acts.logits >= 4096 * 151_936 * 4


def test_training_time_gpt3_is_about_34_days():
    days = estimator.training_days(175e9, 300e9, 1024, 140e12, recompute=True)
    assert 33 <= days <= 35
    assert estimator.training_flops(1, 1) == 6 and estimator.training_flops(1, 1, True) == 8


def test_bad_sizes_and_options_raise():
    with pytest.raises(LabkitError):
        activations.activation_bytes("tiny-llama", 0, 8)
    with pytest.raises(LabkitError):
        estimator.training_memory("tiny-llama", optimizer="lion")
    with pytest.raises(LabkitError):
        activations.activation_bytes("tiny-bloom", 1, 8, attention="sdpa")
