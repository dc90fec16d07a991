"""Self-checking exercises: ``check("05.1", answer)`` says right or wrong, with a hint, and never
prints the expected value (the solution stays in the notebook). Each notebook registers its
exercises in its own block below, keyed ``"NN.T"`` (notebook, tier 1-3)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labkit import LabkitError, unknown


@dataclass(frozen=True)
class Exercise:
    """How to judge one answer: ``accept(answer) -> bool`` and a hint shown when it is wrong."""

    accept: Callable[[Any], bool]
    hint: str


def number(expected: float | Callable[[], float], rel: float = 1e-3, abs_: float = 0.0):
    """Accept a real number within ``rel`` (relative) or ``abs_`` of ``expected``: a number or a
    zero-argument callable, evaluated only when the learner checks (computed, not written down)."""

    def accept(answer: Any) -> bool:
        want = expected() if callable(expected) else expected
        try:
            got = float(answer)
        except (TypeError, ValueError):
            return False
        return math.isfinite(got) and math.isclose(got, want, rel_tol=rel, abs_tol=abs_)

    return accept


def integer(expected: int | Callable[[], int]):
    """Accept exactly this integer (an ``int``, a numpy integer or an integral float)."""

    def accept(answer: Any) -> bool:
        want = expected() if callable(expected) else expected
        try:
            return float(answer) == want and int(answer) == want
        except (TypeError, ValueError, OverflowError):
            return False

    return accept


EXERCISES: dict[str, Exercise] = {}


# --- notebook 00 ---
def _module(name: str):
    """``labkit.<name>``, imported when an answer is checked (this module stays cheap)."""
    return importlib.import_module(f"labkit.{name}")


def _tied_tiny_llama() -> int:
    """Parameters of tiny-llama with its head tied to the embedding (the untied count minus V x h)."""
    config = _module("models.zoo").load_config("tiny-llama")
    config.tie_word_embeddings = True
    return _module("models.architecture").count_parameters(config)


def _p_bear_forest() -> float:
    import torch

    from labkit.models import zoo

    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    ids = tok("The bear lives in the")["input_ids"]
    forest = tok(" forest", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return logits.softmax(-1)[forest].item()


def _ln_vocab() -> float:
    from labkit.models import zoo

    return math.log(zoo.load_config("zoo-llama").vocab_size)


EXERCISES.update(
    {
        "00.1": Exercise(
            integer(_tied_tiny_llama),
            "sum p.numel() over the parameters of tiny-llama built with tie_word_embeddings=True",
        ),
        "00.2": Exercise(
            number(_p_bear_forest, rel=1e-3),
            "softmax of the last position's logits for 'The bear lives in the', at ' forest'",
        ),
        "00.3": Exercise(
            number(_ln_vocab, rel=0.05),
            "mean next-token cross-entropy of the untrained model on the validation blocks",
        ),
    }
)


# --- notebook 01 ---
def _loss_beats_weights() -> int:
    from labkit.memory import activations, estimator

    w = estimator.weight_bytes("qwen2.5-0.5b", "bf16")
    return next(
        s
        for s in range(256, 65536, 256)
        if activations.activation_bytes("qwen2.5-0.5b", 1, s, "bf16", checkpointing=True).logits > w
    )


def _dropout_bytes() -> int:
    from labkit.memory import activations
    from labkit.models import zoo

    config = zoo.load_config("tiny-gpt2")
    on, off = (
        activations.activation_bytes(config, 2, 32, "fp32", "sdpa", dropout=d, device="cpu").total
        for d in (True, False)
    )
    return on - off


EXERCISES.update(
    {
        "01.1": Exercise(
            number(lambda: _module("memory.estimator").weight_bytes("mistral-7b", "bf16") / 2**30),
            "bytes of the weights in bf16 (estimator.weight_bytes), divided by 2**30",
        ),
        "01.2": Exercise(
            integer(_loss_beats_weights),
            "compare activation_bytes(...).logits with weight_bytes(..., 'bf16') for s = 256, 512, ...",
        ),
        "01.3": Exercise(
            integer(_dropout_bytes),
            "saved bytes in train mode minus saved bytes in eval mode, same ids",
        ),
    }
)


# --- notebook 02 ---
def _adamw8bit_saving() -> float:
    estimator = _module("memory.estimator")
    a, b = (
        estimator.training_memory("llama-2-7b", optimizer=o).optimizer
        for o in ("adamw", "adamw8bit")
    )
    return (a - b) / 2**30


def _sdpa_checkpointing_saving() -> float:
    from labkit.memory import activations
    from labkit.models import zoo

    config = zoo.load_config("zoo-llama")
    kept = [
        activations.activation_bytes(
            config, 2, 128, "fp32", "sdpa", checkpointing=ck, device="cpu"
        ).total
        for ck in (False, True)
    ]
    return 1 - kept[1] / kept[0]


EXERCISES.update(
    {
        "02.1": Exercise(
            number(_adamw8bit_saving, rel=1e-3),
            "difference of the .optimizer bytes of the two breakdowns, in GiB",
        ),
        "02.3": Exercise(
            number(_sdpa_checkpointing_saving, abs_=2e-3),
            "1 - (saved bytes with checkpointing) / (saved bytes without), as a fraction, SDPA",
        ),
    }
)


# --- notebook 03 ---
def _zero3_per_gpu() -> float:
    estimator = _module("memory.estimator")
    b = estimator.training_memory("llama-3.1-8b", batch=1, seq=2048, checkpointing=True)
    return estimator.sharded(b, 8, "zero3").total / 2**30


EXERCISES.update(
    {
        "03.1": Exercise(
            integer(lambda: _module("models.architecture").count_parameters("qwen2.5-7b")),
            "sum p.numel() over the meta model's parameters",
        ),
        "03.2": Exercise(
            integer(lambda: _module("models.zoo").load_model("zoo-llama").get_memory_footprint()),
            "the smallest max_memory={'cpu': ...} in bytes whose infer_auto_device_map has no 'disk'",
        ),
        "03.3": Exercise(
            number(_zero3_per_gpu, rel=1e-3),
            "estimator.sharded(breakdown, 8, 'zero3').total in GiB, for the breakdown the task describes",
        ),
    }
)


# --- notebook 04 ---
def _first_unrepresentable(fmt: str) -> int:
    from labkit.quant import formats

    return 2 ** (formats.FORMATS[fmt].mantissa_bits + 1) + 1


def _bf16_error_of_tenth() -> float:
    from labkit.quant import formats

    return abs(formats.decode(0.1, "bf16").value - 0.1)


def _best_loss_scale() -> float:
    """04.3 for notebook 04's defaults: the zoo model's ``nn.Linear`` weight gradients (those fp16
    autocast computes in fp16) on 4 x 32 validation tokens."""
    import torch

    from labkit.data import loaders
    from labkit.models import zoo
    from labkit.quant import formats
    from labkit.training.lm_loss import pack

    model = zoo.load_model("zoo-llama")
    ids = pack(zoo.load_tokenizer("zoo-llama"), loaders.load_corpus("validation"), 32)[:4]
    model(input_ids=ids, labels=ids).loss.backward()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    grads = torch.cat([p.grad.flatten() for m in linears for p in m.parameters(recurse=False)])
    return formats.best_loss_scale(grads)


EXERCISES.update(
    {
        "04.1": Exercise(
            number(_bf16_error_of_tenth, rel=1e-2),
            "decode 0.1 in bf16 (formats.decode) and take |stored value - 0.1|; torch rounds to nearest",
        ),
        "04.2": Exercise(
            lambda a: (
                tuple(int(x) for x in a)
                == (_first_unrepresentable("fp16"), _first_unrepresentable("bf16"))
            ),
            "a pair (fp16, bf16); think of the number of significant bits of each format",
        ),
        "04.3": Exercise(
            number(_best_loss_scale, rel=1e-9),
            "the factor with no inf and the smallest share of small gradients with relative error > 2**-11",
        ),
    }
)


# --- notebook 05 ---
def _absmax4_error() -> float:
    import torch

    from labkit.quant import integer

    x = torch.tensor([1.2, -0.5, -4.3, 1.2, -3.1, 0.8, 2.4, 5.4])
    q, s = integer.absmax_quantize(x, bits=4)
    return (integer.absmax_dequantize(q, s) - x).abs().max().item()


EXERCISES.update(
    {
        "05.1": Exercise(
            number(_absmax4_error, rel=1e-3),
            "dequantize the 4-bit integers and take the largest |dequantized - x|",
        ),
    }
)


# --- notebook 06 ---
def _bits(*args: Any, **kwargs: Any) -> float:
    """labkit.quant.codebook.bits_per_parameter, imported when an answer is checked."""
    return _module("quant.codebook").bits_per_parameter(*args, **kwargs)


EXERCISES.update(
    {
        "06.1": Exercise(
            number(lambda: _bits(4, 128, True), rel=1e-6),
            "4 bits + 8 bits of absmax per block + the fp32 constants of the absmax blocks",
        ),
    }
)


# --- notebook 07 ---
EXERCISES.update(
    {
        "07.1": Exercise(
            number(lambda: _bits(8, 128, absmax_bits=16) - 8),
            "one 16-bit scale shared by the weights of a group",
        ),
    }
)


# --- notebook 08 ---
def _zoo_hidden() -> int:
    from labkit.models import zoo

    return zoo.load_config("zoo-llama").hidden_size


def _lr_matching_random_step(lr: float = 0.3) -> float:
    """The learning rate whose first Adam step (~lr per coordinate) moves a SAMPLE_VOCAB prompt's
    rows (seed 0: rows copied from random vocabulary embeddings) by the fraction ``lr`` moves
    notebook 08's random N(0, 1) rows of seed 0 (their measured RMS, about 1.03)."""
    from labkit.tuners import peft_methods

    def rms(model) -> float:
        return model.prompt_encoder["default"].embedding.weight.pow(2).mean().sqrt().item()

    vocab = peft_methods.attach("zoo-llama", "prompt", prompt_tuning_init="SAMPLE_VOCAB")
    return lr * rms(vocab) / rms(peft_methods.attach("zoo-llama", "prompt"))


EXERCISES.update(
    {
        "08.1": Exercise(
            integer(lambda: 20 * _zoo_hidden()),
            "each virtual token is one row as wide as the model's hidden size",
        ),
        "08.2": Exercise(
            number(_lr_matching_random_step, rel=0.02),
            "Adam's first update is about lr on every coordinate, so the relative step is "
            "lr / RMS of the rows: 0.3 x RMS(SAMPLE_VOCAB rows) / RMS(random rows), both "
            "measured on the seed-0 prompts (square, mean, square root), not the nominal RMS 1",
        ),
    }
)


# --- notebook 09 ---
def _p_tuning_mlp_count(n: int, e: int) -> int:
    """P-tuning with an MLP encoder: n*h virtual tokens + Linear(h,e), Linear(e,e), Linear(e,h)."""
    h = _zoo_hidden()
    return n * h + (h * e + e) + (e * e + e) + (e * h + h)


def _p_tuning_kept(ratio: bool = False) -> float:
    """09.2: the n*h numbers kept after training; ratio=True: the parameters trained over them."""
    d = _module("tuners.peft_methods").DEFAULTS["p-tuning-mlp"]
    kept = d["num_virtual_tokens"] * _zoo_hidden()
    trained = _p_tuning_mlp_count(d["num_virtual_tokens"], d["encoder_hidden_size"])
    return trained / kept if ratio else kept


EXERCISES.update(
    {
        "09.1": Exercise(
            integer(lambda: _p_tuning_mlp_count(4, 32)),
            "virtual tokens n*h plus three Linear layers h->e, e->e, e->h, each with a bias",
        ),
        "09.2": Exercise(
            lambda a: integer(_p_tuning_kept)(a[0]) and number(lambda: _p_tuning_kept(True))(a[1]),
            "a pair (numbers kept, times fewer than trained): only the encoder's output is kept, "
            "one hidden-size vector per virtual token; trained: the embedding plus the Linears",
        ),
    }
)


# --- notebook 10 ---
def _prefix_count(name: str, n: int) -> int:
    """Prefix tuning: n virtual tokens x L layers x (key + value) x n_kv * head_dim."""
    from labkit.models import zoo

    c = zoo.load_config(name)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return n * c.num_hidden_layers * 2 * kv * head_dim


EXERCISES.update(
    {
        "10.1": Exercise(
            integer(lambda: _prefix_count("llama-3.1-8b", 20)),
            "one key and one value vector per virtual token in every layer, each as wide as "
            "n_kv_heads x head_dim",
        ),
        "10.2": Exercise(
            number(lambda: _prefix_count("llama-2-7b", 10) / _prefix_count("mistral-7b", 10)),
            "both have 32 layers and head_dim 128: compare their numbers of key/value heads",
        ),
    }
)


# --- notebook 11 ---
def _lora_count(model_id: str, r: int, targets: list[str] | str) -> Callable[[], int]:
    """The LoRA parameter count of ``r`` on ``targets`` of a zoo/catalog config (peft's rule)."""

    def expected() -> int:
        from peft import LoraConfig

        from labkit.models import zoo
        from labkit.tuners import peft_methods

        return peft_methods.count_trainable(
            LoraConfig(r=r, target_modules=targets), zoo.load_config(model_id)
        )

    return expected


EXERCISES.update(
    {
        "11.1": Exercise(
            integer(_lora_count("zoo-llama", 4, ["q_proj", "v_proj"])),
            "r·(d_in + d_out) per layer and per target, times the layers; with GQA v_proj's "
            "d_out is num_key_value_heads · head_dim, not hidden_size",
        ),
        "11.2": Exercise(
            integer(_lora_count("gpt2", 8, ["c_attn"])),
            "c_attn maps hidden_size to three times hidden_size (q, k, v fused); count "
            "r·(d_in + d_out) once per layer, for every layer of the gpt2 config",
        ),
    }
)


# --- notebook 12 ---
def _full_over_lora_qv() -> float:
    """Llama-2-7B: all parameters / LoRA r 8 on q_proj and v_proj."""
    from labkit.models import architecture
    from labkit.tuners import peft_methods

    cfg = peft_methods.make_config("lora", "zoo-llama", target_modules=["q_proj", "v_proj"])
    return architecture.count_parameters("llama-2-7b") / peft_methods.count_trainable(
        cfg, "llama-2-7b"
    )


EXERCISES.update(
    {
        "12.1": Exercise(
            number(_full_over_lora_qv, rel=1e-3),
            "LoRA adds r*(d_in+d_out) per adapted matrix: 2 matrices per layer, 32 layers; "
            "divide the model's parameter count by that",
        ),
    }
)


# --- notebook 13 ---
EXERCISES.update(
    {
        "13.1": Exercise(
            integer(_lora_count("zoo-llama", 8, "all-linear")),  # RANK = 8 in the notebook
            "sum p.numel() over the model's named_parameters whose name contains 'lora_' "
            "(A and B of every adapted layer); the notebook's default RANK is 8",
        ),
    }
)


# --- notebook 14 ---
EXERCISES.update(
    {
        "14.1": Exercise(
            integer(0),
            "--n-trials N counts COMPLETE trials already in the study; how many are missing?",
        ),
    }
)


# --- notebook 15 ---
def _sent(strategy: str, world: int, lora_r: int = 0) -> float:
    """Bytes each rank sends per step for fp32 zoo-llama: full, or LoRA of rank ``lora_r`` on
    q_proj/v_proj (peft's default for Llama; the weights include the adapters)."""
    from labkit.distributed import parallel

    w = g = 4 * _module("models.architecture").count_parameters("zoo-llama")
    if lora_r:  # only the adapters have gradients
        g = 4 * _lora_count("zoo-llama", lora_r, ["q_proj", "v_proj"])()
        w += g
    return parallel.ring_sent(parallel.textbook_payload(strategy, w, g), world)


EXERCISES.update(
    {
        "15.1": Exercise(
            number(lambda: _sent("ddp", 4), rel=1e-6),
            "a ring all-reduce sends 2(N-1)/N of the payload; DDP's payload is the gradients",
        ),
        "15.2": Exercise(
            number(lambda: _sent("zero3", 2, 16) / _sent("ddp", 2, 16), rel=1e-4),
            "rank 16 doubles the adapters: G doubles and W grows by the rank-8 G; then "
            "ring_sent of textbook_payload('zero3', W, G) over that of 'ddp'",
        ),
    }
)


# --- notebook 16 ---
def _from_record(name: str) -> Any:
    """``labkit.studies.forgetting.<name>(record)``, imported when an answer is checked."""
    fs = importlib.import_module("labkit.studies.forgetting")
    return getattr(fs, name)(fs.load())


EXERCISES.update(
    {
        "16.1": Exercise(
            number(lambda: _from_record("first_epoch_share"), rel=1e-3),
            "seed means from fs.epoch_bands(record, 'full'): (epoch 1 - before) / (last - before)",
        ),
        "16.3": Exercise(
            lambda answer: answer == _from_record("least_forgetting"),
            "a run's name: of the runs with chat_em >= 0.9 on every seed, the lowest mean corpus loss",
        ),
    }
)


# --- notebook 17 ---
def _nb17_warmup() -> float:
    from labkit.inference import roofline

    return roofline.decode_tokens_per_s(roofline.decode_cost("qwen2.5-7b", "bf16"), "rtx-4090")


def _nb17_practice() -> int:
    from labkit.inference import roofline

    cost = roofline.decode_cost("llama-3.1-8b", "bf16")
    return next(
        b
        for b in range(1, 100_000)
        if roofline.regime(cost, "a100-80gb-sxm", batch=b) == "compute-bound"
    )


def _nb17_challenge() -> float:
    from labkit.inference import roofline

    cost = roofline.decode_cost("llama-3.1-8b", "nf4")
    batch = roofline.max_batch(cost, "rtx-4090", context=4096)
    return roofline.decode_tokens_per_s(cost, "rtx-4090", batch=batch, context=4096)


EXERCISES.update(
    {
        "17.1": Exercise(
            number(_nb17_warmup, rel=0.01),
            "batch 1: tokens/s = card bandwidth (bytes/s) / bytes read per step "
            "(roofline.decode_cost(...).weight_bytes)",
        ),
        "17.2": Exercise(
            integer(_nb17_practice),
            "loop over batch sizes and ask roofline.regime(cost, card, batch=b) for the first "
            "'compute-bound'",
        ),
        "17.3": Exercise(
            number(_nb17_challenge, rel=0.01),
            "roofline.max_batch(cost, card, context=4096) gives the batch; then "
            "decode_tokens_per_s at that batch and context (summed over the batch)",
        ),
    }
)


def check(exercise: str, answer: Any = None) -> bool | None:
    """Say whether ``answer`` is right for ``exercise`` (e.g. ``"05.1"``); return True if it is.

    ``None`` or ``...`` means "not answered yet": it prints how to answer and returns None (falsy,
    and Jupyter shows no ``Out[]`` line for it), so a notebook run top to bottom never fails on an
    exercise the learner has not done, and its stored output is the one printed line.
    """
    if not isinstance(exercise, str) or exercise not in EXERCISES:
        raise unknown("exercise", exercise, sorted(EXERCISES) or ["(none registered)"])
    if answer is None or answer is ...:
        print(f"{exercise}: not answered yet; set `answer = ...` above and run this cell again")
        return None
    entry = EXERCISES[exercise]
    try:
        ok = bool(entry.accept(answer))
    except LabkitError:
        raise
    except Exception as err:  # a learner's function that raises is a wrong answer, not a crash
        print(
            f"{exercise}: not yet; your answer raised {type(err).__name__}: {err}. Hint: {entry.hint}"
        )
        return False
    print(f"{exercise}: right!" if ok else f"{exercise}: not yet. Hint: {entry.hint}")
    return ok
