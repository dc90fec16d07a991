"""labkit.memory.dryrun: the dry run on fake tensors against the formula (five families) and against real
CPU measurements (families without a formula); the estimator and the CLI on held-out families."""

import json

import pytest
import torch
from conftest import SMALL, tiny_config
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from labkit import LabkitError, cli
from labkit.memory import activations, dryrun, estimator, measure
from labkit.memory.job import TrainingJob
from labkit.models.targets import trainable_shapes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: LoRA targets of the tiny families without a formula (conftest.TINY_FAMILIES).
TARGETS = {
    "mixtral": "q_proj,v_proj",
    "qwen3_moe": "q_proj,v_proj",
    "gemma2": "q_proj,v_proj",
    "gemma3_text": "q_proj,o_proj",
    "phi3": "qkv_proj",
    "qwen3": "q_proj,v_proj",
    "gpt_neox": "query_key_value",
}
#: (attention, checkpointing, dtype, method) per family: each switch on and off at least once.
CASES = [
    ("sdpa", False, "bf16", "full"),
    ("eager", True, "fp32", "full"),
    ("sdpa", True, "fp32", "lora"),
    ("eager", False, "bf16", "lora"),
]


def step(precision, attention="sdpa", batch=2, seq=12, **options):
    """The training job of a dry run: ``precision`` "fp32", "bf16" (pure) or "bf16-mixed"."""
    return TrainingJob(precision=precision, attention=attention, batch=batch, seq=seq, **options)


def real_saved(config, attn, ckpt, dtype, method, targets, b=2, s=12, autocast=False):
    """The saved-tensor measurement of a real CPU step (peft fp32 adapters, lora_dropout=0)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model = model.to(DTYPES[dtype]).train()
    if method == "lora":
        lora = LoraConfig(r=4, target_modules=targets.split(","), lora_dropout=0.0)
        model = get_peft_model(model, lora)  # peft keeps adapters in fp32
    ids = torch.randint(3, config.vocab_size, (b, s), generator=torch.Generator().manual_seed(1))
    if autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return measure.saved_tensor_bytes(model, ids, checkpointing=ckpt)
    return measure.saved_tensor_bytes(model, ids, checkpointing=ckpt)


@pytest.mark.parametrize("model_type", TARGETS)
@pytest.mark.parametrize(("attn", "ckpt", "dtype", "method"), CASES)
def test_dry_run_equals_a_real_cpu_step(model_type, attn, ckpt, dtype, method):
    """Byte for byte: the dry run's activations, logits and recomputed block equal the saved
    tensors of a real CPU step on a tiny config (MoE experts through grouped_mm included).
    Gemma 2 has no SDPA in transformers 5: its SDPA cases are refused in one line instead."""
    config = tiny_config(model_type)
    targets = TARGETS[model_type]
    kw = dict(checkpointing=ckpt, method=method, lora_r=4, lora_targets=targets)
    if model_type == "gemma2" and attn == "sdpa":
        with pytest.raises(LabkitError) as err:
            dryrun.training_activations(config, step(dtype, attn, **kw))
        assert "\n" not in str(err.value)
        return
    got = real_saved(config, attn, ckpt, dtype, method, targets)
    est = dryrun.training_activations(config, step(dtype, attn, **kw)).activations
    assert (est.total, est.logits, est.recompute) == (got.total, got.logits, got.recompute)
    if ckpt:
        assert est.recompute > 0


@pytest.mark.parametrize("model_type", ["qwen3", "mixtral"])
def test_dry_run_under_autocast_and_frozen_layers(model_type):
    """bf16 autocast on fp32 weights: activations and autocast's weight copies equal the real
    step's; frozen embeddings + first block: equal too."""
    config = tiny_config(model_type)
    got = real_saved(config, "sdpa", False, "fp32", "full", "", autocast=True)
    dry = dryrun.training_activations(config, step("bf16-mixed"))
    assert (dry.activations.total, dry.param_copies) == (got.total, got.param_copies)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    keep = set(trainable_shapes(config, "frozen", frozen_layers=1))
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
    ids = torch.randint(3, 96, (2, 12))
    got = measure.saved_tensor_bytes(model, ids)
    dry = dryrun.training_activations(config, step("fp32", method="frozen", frozen_layers=1))
    assert dry.activations.total == got.total


FIVE = [
    ("tiny-llama", "sdpa", True, "bf16"),
    ("tiny-llama", "eager", False, "fp32"),
    ("tiny-qwen2", "sdpa", False, "fp32"),
    ("tiny-qwen2", "eager", True, "bf16"),
    ("tiny-gpt2", "sdpa", True, "fp32"),
    ("tiny-gpt2", "eager", False, "bf16"),
    ("tiny-bloom", "eager", True, "fp32"),
    ("tiny-bloom", "eager", False, "bf16"),
    ("llama-3.1-8b", "sdpa", False, "bf16"),
]


@pytest.mark.parametrize(("name", "attn", "ckpt", "dtype"), FIVE)
def test_formula_and_dry_run_agree_on_the_five_families(name, attn, ckpt, dtype):
    """The taught derivation (labkit.memory.activations, device="cpu") == the dry run, to the byte:
    full fine-tuning and LoRA on all linears (an 8B config at sequence 256 included)."""
    b, s = (1, 256) if name == "llama-3.1-8b" else (2, 16)
    dry = dryrun.training_activations(name, step(dtype, attn, b, s, checkpointing=ckpt))
    dry = dry.activations
    est = activations.activation_bytes(name, b, s, dtype, attn, checkpointing=ckpt, device="cpu")
    assert (dry.total, dry.logits, dry.recompute) == (est.total, est.logits, est.recompute)
    if name == "llama-3.1-8b":
        return
    kw = dict(method="lora", lora_r=4, lora_targets="all-linear", checkpointing=ckpt)
    job = step(dtype, attn, b, s, device="cpu", **kw)
    dry = dryrun.training_activations(name, job).activations
    assert dry.total == activations.job_activation_bytes(name, job).total


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("gemma2", {}),  # hybrid: sliding and global layers alternate
        ("gemma3_text", {}),
        ("mistral", {}),  # every layer sliding
        ("mixtral", {"num_local_experts": 4}),
        ("gpt_neox", {}),
    ],
)
def test_prefill_peak_and_kv_cache_equal_a_live_tensor_measurement(model_type, extra):
    """The prefill's largest set of live tensors (dry run) == the real CPU prefill's, followed op
    by op with the same tracker; the KV cache formula (sliding windows) == the cache a real
    generation keeps after one decoding step."""
    kw = dict(SMALL, num_hidden_layers=4, num_attention_heads=4, **extra)
    if model_type != "gpt_neox":
        kw.update(num_key_value_heads=2, sliding_window=8)
    config = AutoConfig.for_model(model_type, **kw)
    attn = "eager" if model_type == "gemma2" else "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    ids = torch.randint(3, 96, (2, 20))
    real = dryrun.live_peak(model, ids)
    est = dryrun.prefill_peak(config, 2, 20, "fp32", attn)
    assert est == real and est["peak"] > est["kv_cache"] + est["logits"]
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        out = model(input_ids=ids[:, :1], cache=out.cache, use_cache=True)
    cache = dryrun.cache_bytes(out.cache)
    assert estimator.kv_cache_bytes(config, 2, 21, "fp32") == cache
    kv, d = estimator.kv_heads_and_dim(config)
    all_full = 2 * kv * d * 21 * 4 * 2 * 4  # every layer keeping all 21 tokens
    windows = estimator.cache_windows(config)
    assert cache < all_full if 8 in windows else cache == all_full
    if model_type == "gemma2":  # hybrid: local (window 8) and global layers alternate
        assert windows == [8, None, 8, None]


def test_training_memory_and_estimate_use_the_dry_run_for_other_families(tmp_path, capsys):
    """A held-out family through the CLI (a config.json path, JSON): parameters equal the real
    model's numel, activations + logits the real saved-tensor measurement; the five families say
    "formula"."""
    config = tiny_config("qwen3")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    argv = ["estimate", str(path), "--seq", "12", "--batch", "2", "--precision", "bf16", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    real = AutoModelForCausalLM.from_config(config)
    assert data["parameters"] == sum(p.numel() for p in real.parameters())
    got = real_saved(config, "sdpa", False, "bf16", "full", "")
    assert data["activations"] + data["logits"] == got.total
    assert data["activations_from"] == "dry-run"
    est = estimator.training_memory(config, method="lora", lora_targets="q_proj", seq=12)
    assert est.details["activations_from"] == "dry-run" and est.trainable_parameters > 0
    assert estimator.training_memory("tiny-llama").details["activations_from"] == "formula"
    assert cli.main(["estimate", str(path), "--mode", "infer", "--seq", "20", "--json"]) == 0
    infer = json.loads(capsys.readouterr().out)
    assert infer["prefill_peak"] > 0 and infer["kv_cache"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"model_type": "no-such-model"},
        {"model_type": "my_remote_lm", "auto_map": {"AutoModelForCausalLM": "m.MyLM"}},
        {"model_type": "t5", "vocab_size": 10},
    ],
)
def test_unsupported_configs_are_one_line(bad, capsys):
    with pytest.raises(LabkitError) as err:
        dryrun.training_activations(bad, batch=1, seq=4)
    assert "\n" not in str(err.value)
    with pytest.raises(LabkitError):
        estimator.training_memory(bad)


def test_bad_sizes_are_one_line():
    for kw in (dict(batch=0, seq=4), dict(batch=1, seq=-1)):
        with pytest.raises(LabkitError):
            dryrun.training_activations("tiny-llama", **kw)
    with pytest.raises(LabkitError, match="unknown attention"):
        dryrun.fake_model("tiny-llama", attention="flash")
    with pytest.raises(LabkitError, match="unknown method"):
        dryrun.training_activations("tiny-llama", batch=1, seq=4, method="dora")
    with pytest.raises(LabkitError):
        dryrun.prefill_peak("tiny-llama", 0, 4)
