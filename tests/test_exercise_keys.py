"""The answer keys of ``labkit.course.exercises``, checked against answers computed another way.

Every expected answer here comes from somewhere other than the key's own calls: a hand formula on
a model's published config, a literal from a published source (model cards, NVIDIA datasheets,
the QLoRA paper), or the real library (transformers' model, peft's trainable count, torch's and
bitsandbytes' optimizers, the bytes autograd saves). A key that drifts from its lesson fails here.
The last tests tie the keys to the notebooks: the learner's answer cell under an exercise heading
calls the key of that notebook and tier, and every key has such a cell.

The plumbing of ``check()`` (right, wrong, unanswered, unknown) is ``tests/test_exercises.py``;
16.1 is checked against the forgetting record in ``tests/test_studies.py``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from peft import (
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from labkit.course import exercises, notebook_format, runner
from labkit.data import loaders
from labkit.memory import estimator, measure
from labkit.models import zoo
from labkit.tuners import peft_methods

# Published figures (model cards / config.json on the Hugging Face hub, vendor datasheets).
MISTRAL_7B_PARAMS = 7_241_732_096
QWEN25_05B_PARAMS, QWEN25_05B_VOCAB = 494_032_768, 151_936
QWEN25_7B_PARAMS = 7_615_616_512
LLAMA2_7B_PARAMS = 6_738_415_616
RTX_4090 = {"bandwidth": 1008e9, "memory": 24e9}  # Ada whitepaper: 1008 GB/s, 24 GB
A100_SXM = {"bandwidth": 2039e9, "bf16_flops": 312e12}  # A100 80GB datasheet
#: Llama 3.1 8B's config: layers, hidden, KV heads x head_dim, MLP width, vocabulary
LLAMA31_8B = {"L": 32, "h": 4096, "kv": 8 * 128, "i": 14336, "V": 128256}


def _right_and_wrong(key: str, right, *wrong) -> None:
    """``right`` passes ``key``; each of ``wrong`` and a non-number do not."""
    assert exercises.check(key, right), (key, right)
    for answer in (*wrong, "not a number"):
        assert not exercises.check(key, answer), (key, answer)


def _peft_trainable(config, model: str = "zoo-llama") -> int:
    """peft's own trainable count of ``config`` on the real zoo model."""
    return get_peft_model(zoo.load_model(model), config).get_nb_trainable_parameters()[0]


# --- notebooks 00-03: models and memory --------------------------------------------------------


def test_00_1_is_the_real_tied_models_parameter_count():
    untied = sum(p.numel() for p in zoo.load_model("tiny-llama").parameters())
    config = zoo.load_config("tiny-llama")
    config.tie_word_embeddings = True
    tied = AutoModelForCausalLM.from_config(config)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    n = sum(p.numel() for p in tied.parameters())  # the shared matrix counted once
    assert n == untied - config.vocab_size * config.hidden_size
    _right_and_wrong("00.1", n, untied, n + 1)


def test_00_2_is_forests_probability_after_the_bear_not_the_fox():
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    forest = tok(" forest", add_special_tokens=False)["input_ids"][0]
    probs = {}
    with torch.no_grad():
        for animal in ("bear", "fox"):
            ids = torch.tensor([tok(f"The {animal} lives in the")["input_ids"]])
            probs[animal] = model(input_ids=ids).logits[0, -1].softmax(-1)
    bear = probs["bear"]
    assert bear.argmax() != forest  # not the bear's top choice: the cell that prints the top 3
    # (for the fox) does not show it; wrong: the fox's printed value, the bear's top probability
    _right_and_wrong("00.2", bear[forest].item(), probs["fox"][forest].item(), bear.max().item())


def test_00_3_accepts_an_untrained_models_loss_and_not_the_trained_ones():
    tok = zoo.load_tokenizer("zoo-llama")
    text = "\n".join(loaders.load_corpus("validation")[:40])
    ids = tok(text, return_tensors="pt")["input_ids"][0, :512].view(4, 128)
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(zoo.load_config("zoo-llama")).eval()
    with torch.no_grad():
        fresh = untrained(input_ids=ids, labels=ids).loss.item()
        trained = zoo.load_model("zoo-llama")(input_ids=ids, labels=ids).loss.item()
    _right_and_wrong("00.3", fresh, trained)


def test_01_1_is_mistral_7b_published_count_in_bf16():
    _right_and_wrong("01.1", MISTRAL_7B_PARAMS * 2 / 2**30, MISTRAL_7B_PARAMS * 2 / 1e9)


def test_01_2_is_where_the_fp32_log_softmax_outgrows_the_bf16_weights():
    weights = QWEN25_05B_PARAMS * 2
    s = next(s for s in range(256, 65536, 256) if 1 * s * QWEN25_05B_VOCAB * 4 > weights)
    bf16_logits = next(s for s in range(256, 65536, 256) if s * QWEN25_05B_VOCAB * 2 > weights)
    assert s == 1792
    _right_and_wrong("01.2", s, s - 256, bf16_logits)


def test_01_3_is_the_measured_train_minus_eval_saved_bytes():
    config = zoo.load_config("tiny-gpt2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(3, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    saved = {}
    for train in (True, False):
        model.train(train)
        saved[train] = measure.saved_tensor_bytes(model, ids).total
    _right_and_wrong("01.3", saved[True] - saved[False], saved[True])


def test_02_1_is_torch_adamw_minus_bitsandbytes_adamw8bit_per_value():
    """Bytes per value from the real optimizers after one step on a 4096 x 256 tensor (every
    Llama-2-7B tensor is at least 4096 values and a multiple of bitsandbytes' 256-value block)."""
    import bitsandbytes as bnb

    def state_bytes_per_value(make) -> float:
        p = torch.nn.Parameter(torch.randn(4096, 256))
        p.grad = torch.randn_like(p)
        opt = make([p])
        opt.step()
        names = ("exp_avg", "exp_avg_sq", "state1", "state2", "absmax1", "absmax2")
        state = opt.state[p]
        return sum(state[k].numel() * state[k].element_size() for k in names if k in state) / (
            p.numel()
        )

    fp32 = state_bytes_per_value(torch.optim.AdamW)
    int8 = state_bytes_per_value(bnb.optim.AdamW8bit)
    assert fp32 == 8 and 2 < int8 < 2.1
    saved = LLAMA2_7B_PARAMS * (fp32 - int8) / 2**30
    _right_and_wrong("02.1", saved, LLAMA2_7B_PARAMS * 6 / 2**30, LLAMA2_7B_PARAMS * 6 / 1e9)


def test_02_3_is_the_measured_checkpointing_saving_with_sdpa():
    vocab = zoo.load_config("zoo-llama").vocab_size
    ids = torch.randint(3, vocab, (2, 128), generator=torch.Generator().manual_seed(0))
    kept = {}
    for checkpointing in (False, True):
        model = zoo.load_model("zoo-llama", attn_implementation="sdpa").train()
        kept[checkpointing] = measure.saved_tensor_bytes(model, ids, checkpointing).total
    saving = 1 - kept[True] / kept[False]
    _right_and_wrong("02.3", saving, saving + 0.01, kept[True] / kept[False])


def test_03_1_is_the_meta_models_count_and_the_published_one():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(zoo.load_config("qwen2.5-7b"))
    n = sum(p.numel() for p in model.parameters())
    assert n == QWEN25_7B_PARAMS
    _right_and_wrong("03.1", n, n - 152064 * 3584)  # forgetting the untied head is wrong


def test_03_2_is_the_fp32_models_parameter_and_buffer_bytes_the_smallest_all_cpu_plan():
    """Counted by hand over the fp32 model's tensors, and accelerate's planner agrees: that budget
    keeps every module on the CPU, one byte less sends some to disk."""
    from accelerate import infer_auto_device_map

    model = zoo.load_model("zoo-llama", dtype=torch.float32)
    tensors = [*model.parameters(), *model.buffers()]
    n = sum(t.numel() * t.element_size() for t in tensors)

    def devices(cpu_bytes: int) -> set:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model.config)
        plan = infer_auto_device_map(
            skeleton,
            max_memory={"cpu": cpu_bytes},
            no_split_module_classes=skeleton._no_split_modules,
        )
        return set(plan.values())

    assert devices(n) == {"cpu"} and "disk" in devices(n - 1)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    _right_and_wrong("03.2", n, n - 1, params, n // 2)  # a byte short, buffers left out, bf16


def test_03_3_is_every_state_split_eight_ways_plus_unsharded_activations():
    """ZeRO-3 (the ZeRO paper): weights, gradients and optimizer state / N per GPU;
    activations, loss buffer and transient buffers stay whole (each GPU runs its micro-batch)."""
    b = estimator.training_memory("llama-3.1-8b", batch=1, seq=2048, checkpointing=True)
    states = b.weights + b.gradients + b.optimizer
    per_gpu = (states / 8 + b.activations + b.logits + b.transient) / 2**30
    # ZeRO-2 (a wrong answer here): the 16-bit copies whole, master, gradients and state / 8
    copies = b.weights - b.master_weights
    zero2 = (copies + (b.master_weights + b.gradients + b.optimizer) / 8 + b.total - states) / 2**30
    _right_and_wrong("03.3", per_gpu, zero2, b.total / 8 / 2**30)


# --- notebooks 04-07: formats and quantization --------------------------------------------------


def test_04_1_is_torchs_bf16_rounding_error_of_a_tenth():
    err = abs(float(torch.tensor(0.1).bfloat16()) - 0.1)
    truncated = abs(
        float(torch.tensor(0.1).view(torch.int32).bitwise_and(-65536).view(torch.float32)) - 0.1
    )
    assert truncated != pytest.approx(err, rel=1e-2)  # rounding to nearest, not truncating
    _right_and_wrong("04.1", err, truncated)


def test_04_2_is_two_to_the_significant_bits_plus_one():
    """fp16 keeps 11 significant bits (10 stored), bf16 8 (7 stored): 2**11 + 1, 2**8 + 1."""
    assert float(torch.tensor(2049.0).half()) != 2049 and float(torch.tensor(2048.0).half()) == 2048
    assert float(torch.tensor(257.0).bfloat16()) != 257
    assert exercises.check("04.2", (2049, 257))
    assert not exercises.check("04.2", (2048, 256))
    assert not exercises.check("04.2", (1025, 129))


def test_04_3_is_the_factor_numpy_float16_finds_best():
    """The same gradients (the zoo model's nn.Linear weights, notebook 04's 4 x 32 validation
    tokens) rounded through numpy's float16 instead of torch's: the usable factor with the smallest
    share of small gradients whose relative error exceeds fp16's rounding of a normal value (2^-11)."""
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    text = loaders.load_corpus("validation")
    ids = [t for s in tok(text[:40])["input_ids"] for t in [*s, tok.eos_token_id]][:128]
    ids = torch.tensor(ids).view(4, 32)
    model(input_ids=ids, labels=ids).loss.backward()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    g = np.concatenate(
        [p.grad.numpy().ravel() for m in linears for p in m.parameters(recurse=False)]
    )
    g = g.astype(np.float64)
    small = (np.abs(g) < 1e-4) & (g != 0)
    errors = {}
    for s in (1.0, 2.0**8, 2.0**16, 2.0**24):
        with np.errstate(over="ignore"):
            back = (g * s).astype(np.float16).astype(np.float64) / s
        if np.isfinite(back).all():
            errors[s] = np.mean(np.abs(back[small] - g[small]) / np.abs(g[small]) > 2.0**-11)
    best = min(errors, key=errors.get)
    assert 2.0**24 not in errors and len(errors) == 3  # the largest factor overflows
    _right_and_wrong("04.3", best, *(s for s in (1.0, 2.0**8, 2.0**16, 2.0**24) if s != best))


def test_05_1_is_the_largest_error_of_4_bit_absmax_by_hand():
    x = [1.2, -0.5, -4.3, 1.2, -3.1, 0.8, 2.4, 5.4]
    scale = 7 / max(abs(v) for v in x)  # 4 bits: integers -7..7
    worst = max(abs(round(v * scale) / scale - v) for v in x)
    _right_and_wrong(
        "05.1", worst, 0.5 / scale * 1.5, max(abs(round(v * 127 / 5.4) * 5.4 / 127 - v) for v in x)
    )


def test_06_1_is_nf4_with_double_quantization_as_the_qlora_paper_counts():
    """4 bits + an 8-bit absmax per block (128 values in this exercise) + an fp32 constant per
    256 absmax values (QLoRA, section 3: double quantization)."""
    bits = 4 + 8 / 128 + 32 / (128 * 256)
    _right_and_wrong("06.1", bits, 4 + 32 / 128, 4.0)


def test_07_1_is_one_16_bit_scale_per_group_of_128():
    _right_and_wrong("07.1", 16 / 128, 32 / 128, 16 / 64)


# --- notebooks 08-13: PEFT methods -------------------------------------------------------------


def test_08_1_is_peft_prompt_tuning_count():
    n = _peft_trainable(PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
    _right_and_wrong("08.1", n, n + 1, 20 * 768)


def test_08_2_is_the_lr_giving_vocab_rows_random_rows_relative_first_step():
    """A real first Adam step: lr 0.3 on the seed-0 random rows moves them by some fraction of
    their RMS; the answer moves the seed-0 SAMPLE_VOCAB rows (read off the real peft model) by
    the same fraction. The nominal RMS 1 for the random rows is off by about 3%: refused."""
    vocab = peft_methods.attach("zoo-llama", "prompt", prompt_tuning_init="SAMPLE_VOCAB")
    rows = vocab.prompt_encoder["default"].embedding.weight.detach().clone()
    random_rows = peft_methods.attach("zoo-llama", "prompt").prompt_encoder["default"]
    random_rows = random_rows.embedding.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)

    def rms(t: torch.Tensor) -> float:
        return t.pow(2).mean().sqrt().item()

    def relative_step(start: torch.Tensor, lr: float) -> float:
        p = torch.nn.Parameter(start.clone())
        p.grad = torch.randn(p.shape, generator=gen)
        torch.optim.Adam([p], lr=lr).step()
        return rms(p.detach() - start) / rms(start)

    target = relative_step(random_rows, 0.3)
    answer = 0.3 * rms(rows) / rms(random_rows)
    assert relative_step(rows, answer) == pytest.approx(target, rel=0.01)
    nominal = 0.3 * rms(rows)  # random rows taken as RMS 1
    _right_and_wrong("08.2", answer, nominal, 0.01, 0.3 / rms(rows), 0.3)


def test_09_1_is_peft_p_tuning_mlp_count():
    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        encoder_hidden_size=32,
        encoder_reparameterization_type="MLP",
    )
    n = _peft_trainable(config)
    _right_and_wrong("09.1", n, n - 32, 4 * 192)


def test_09_2_is_what_peft_saves_of_a_p_tuning_model_and_how_many_times_fewer():
    """peft keeps only the encoder's output: count the saved file's values; the ratio is peft's
    trainable count (embedding + encoder) over those. A count alone is not the pair asked for."""
    d = peft_methods.DEFAULTS["p-tuning-mlp"]  # the notebook's settings
    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=d["num_virtual_tokens"],
        encoder_hidden_size=d["encoder_hidden_size"],
    )
    model = get_peft_model(zoo.load_model("zoo-llama"), config)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        saved = load_file(Path(folder) / "adapter_model.safetensors")
    n = sum(t.numel() for t in saved.values())
    assert list(saved) == ["prompt_embeddings"]
    trained = model.get_nb_trainable_parameters()[0]
    _right_and_wrong("09.2", (n, trained / n), (trained, trained / n), (n, n / trained), n)


def test_10_1_is_prefix_tuning_on_llama_31_8b_by_hand():
    c = LLAMA31_8B
    n = 20 * c["L"] * 2 * c["kv"]  # a key and a value per virtual token, per layer
    _right_and_wrong("10.1", n, 20 * c["L"] * 2 * c["h"])  # full width: the GQA trap


def test_10_1_hand_formula_is_peft_s_own_count():
    """The hand formula above on a model peft can build here: the zoo Llama (GQA too)."""
    c = zoo.load_config("zoo-llama")
    head = c.hidden_size // c.num_attention_heads
    hand = 20 * c.num_hidden_layers * 2 * c.num_key_value_heads * head
    got = _peft_trainable(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
    assert got == hand


def test_10_2_is_the_ratio_of_key_value_heads():
    """Llama-2-7B: 32 KV heads (MHA); Mistral-7B: 8 (GQA); both 32 layers of head_dim 128."""
    _right_and_wrong("10.2", 32 / 8, 1.0, 8 / 32)


def test_11_1_is_peft_lora_count_on_q_and_v():
    n = _peft_trainable(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    c = zoo.load_config("zoo-llama")
    naive = 4 * 2 * (c.hidden_size + c.hidden_size) * c.num_hidden_layers  # v_proj as wide as q
    assert naive != n
    _right_and_wrong("11.1", n, np.int64(n) + 1, naive)
    assert exercises.check("11.1", np.int64(n))  # what numpy arithmetic gives


def test_11_2_is_lora_on_gpt2_fused_c_attn_by_hand():
    n = 12 * 8 * (768 + 3 * 768)  # GPT-2: 12 layers, c_attn 768 -> 2304
    assert n == 294_912
    _right_and_wrong("11.2", n, 12 * 8 * (768 + 768), 12 * 8 * 2 * 768 * 3)


def test_12_1_is_llama_2_7b_over_lora_r8_on_q_and_v_by_hand():
    lora = 32 * 2 * 8 * (4096 + 4096)
    _right_and_wrong("12.1", LLAMA2_7B_PARAMS / lora, LLAMA2_7B_PARAMS / (lora / 2))


def test_13_1_is_peft_lora_count_on_all_linear_layers():
    n = _peft_trainable(LoraConfig(r=8, target_modules="all-linear"))
    _right_and_wrong("13.1", n, n * 2, _peft_trainable(LoraConfig(r=8)))  # peft's default: q, v


# --- notebooks 14-17: search, several GPUs, inference ------------------------------------------


def test_14_1_a_complete_study_starts_no_trial():
    _right_and_wrong("14.1", 0, 1, 8)


def test_15_1_is_what_each_rank_sends_in_a_ring_all_reduce():
    grads = 4 * sum(p.numel() for p in zoo.load_model("zoo-llama").parameters())  # fp32
    _right_and_wrong("15.1", 2 * (4 - 1) / 4 * grads, grads, 2 * grads)


def test_15_2_is_zero3_over_ddp_bytes_for_the_rank_16_lora_job():
    def fp32_bytes(r: int) -> tuple[int, int]:
        """(weights, gradients) in bytes of peft's real LoRA model, rank r (default targets)."""
        model = get_peft_model(zoo.load_model("zoo-llama"), LoraConfig(r=r))
        weights = sum(p.numel() for p in model.parameters())
        grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return 4 * weights, 4 * grads

    (w, g), (w8, g8) = fp32_bytes(16), fp32_bytes(8)
    # ring over N ranks: zero3 sends (N-1)/N (2W + G), DDP 2 (N-1)/N G: the (N-1)/N cancels
    _right_and_wrong("15.2", (2 * w + g) / (2 * g), (2 * w8 + g8) / (2 * g8), (2 * w + g) / g)


def _llama31_8b_linear_values() -> int:
    c = LLAMA31_8B
    return c["L"] * (2 * c["h"] * c["h"] + 2 * c["h"] * c["kv"] + 3 * c["h"] * c["i"])


def test_17_1_is_bandwidth_over_the_bf16_weights_read_per_step():
    embedding = 152064 * 3584  # looked up, not read as a whole: Qwen2.5-7B's table
    tokens_per_s = RTX_4090["bandwidth"] / (2 * (QWEN25_7B_PARAMS - embedding))
    whole_table = RTX_4090["bandwidth"] / (2 * QWEN25_7B_PARAMS)
    _right_and_wrong("17.1", tokens_per_s, whole_table)


def test_17_2_is_the_first_batch_past_the_a100_ridge():
    c = LLAMA31_8B
    matmul = _llama31_8b_linear_values() + c["V"] * c["h"]  # blocks + untied head
    norms = (2 * c["L"] + 1) * c["h"]  # read, but no matmul FLOPs
    ridge = A100_SXM["bf16_flops"] / A100_SXM["bandwidth"]
    batch = next(b for b in range(1, 10_000) if b * 2 * matmul / (2 * (matmul + norms)) >= ridge)
    _right_and_wrong("17.2", batch, batch - 1, batch + 1)


def test_17_3_is_nf4_llama_at_the_largest_batch_a_4090_holds():
    c = LLAMA31_8B
    nf4_bits = 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA double quantization
    tables = c["V"] * c["h"] * 2 * 2  # embedding and head stay bf16
    resident = _llama31_8b_linear_values() * nf4_bits / 8 + tables + (2 * c["L"] + 1) * c["h"] * 2
    kv_per_token = 2 * c["L"] * c["kv"] * 2  # key and value, bf16
    batch = int((RTX_4090["memory"] - resident) // (4096 * kv_per_token))
    read = resident - c["V"] * c["h"] * 2 + batch * 4096 * kv_per_token
    tokens_per_s = batch * RTX_4090["bandwidth"] / read
    assert batch == 34
    per_sequence = tokens_per_s / batch
    _right_and_wrong("17.3", tokens_per_s, per_sequence, tokens_per_s * 1.05)


# --- keys and notebooks -------------------------------------------------------------------------

ANSWER_CELL = re.compile(r"^answer = None", re.M)
CHECK_CALL = re.compile(r'check\("(\d\d\.\d)"')


def _exercise_table() -> dict[str, list[tuple[str, set[str], bool]]]:
    """Per notebook: (heading, keys its cells call, whether it has a learner's answer cell)."""
    table = {}
    for path in runner.course_notebooks():
        nb = nbformat.read(path, as_version=4)
        table[path.name] = [
            (e.title, set(CHECK_CALL.findall(e.text)), bool(ANSWER_CELL.search(e.text)))
            for e in notebook_format.exercises(nb)
        ]
    return table


TABLE = _exercise_table()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_answer_cell_calls_the_key_of_its_heading(name):
    """Under ``### ⭐⭐ Practice`` of notebook 05, the answer cell calls check("05.2") and nothing
    else; a heading with no answer cell is an open task (a sweep or an explanation) and calls
    no check."""
    for title, called, has_answer_cell in TABLE[name]:
        own = f"{name[:2]}.{notebook_format.tier(title)}"
        if has_answer_cell:
            assert called == {own}, f"{name} {title}: calls {sorted(called)}, expected {own}"
            assert own in exercises.EXERCISES, f"{name} {title}: no key {own} in exercises.py"
        else:
            assert not called, f"{name} {title}: calls {sorted(called)} but has no answer cell"


def test_every_key_has_its_exercise_heading():
    headed = {
        f"{name[:2]}.{notebook_format.tier(title)}"
        for name, rows in TABLE.items()
        for title, called, has_answer_cell in rows
        if has_answer_cell
    }
    assert set(exercises.EXERCISES) == headed
