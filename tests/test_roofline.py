"""labkit.inference.roofline: card table, bytes and FLOPs per decode step, roofline predictions
(the measurements that feed :func:`roofline.machine` are tests/test_bench.py)."""

import pytest

from labkit import LabkitError
from labkit.inference import roofline
from labkit.memory import estimator
from labkit.models import architecture, zoo


def test_cards_have_sources_and_sane_figures():
    assert len(roofline.CARDS) >= 6
    kinds = {c.memory_type[:3] for c in roofline.CARDS.values()}
    assert {"GDD", "HBM"} <= kinds  # consumer GDDR and data-centre HBM cards
    for key, c in roofline.CARDS.items():
        assert key == c.name.lower().replace(" ", "-")
        assert c.source.startswith("https://") and c.note
        assert 500 <= c.bandwidth_gb_s <= 10_000 and 10 <= c.bf16_tflops <= 3000
        assert c.ridge == pytest.approx(c.bf16_tflops * 1e12 / (c.bandwidth_gb_s * 1e9))
    h100 = roofline.card("H100 SXM")
    assert h100 is roofline.card("h100_sxm") is roofline.card(h100)
    assert round(h100.ridge) == 295  # 989.5 TFLOP/s / 3.35 TB/s


def test_unknown_card_is_one_line():
    with pytest.raises(LabkitError, match=r"^unknown card 'tpu'; accepted: rtx-3090, "):
        roofline.card("tpu")


def test_decode_cost_llama_3_1_8b():
    c = roofline.decode_cost("llama-3.1-8b")
    cfg = zoo.load_config("llama-3.1-8b")
    P = architecture.count_parameters(cfg)
    V, h = cfg.vocab_size, cfg.hidden_size
    # every weight but the input-embedding table (only looked up) is read, in bf16
    assert c.resident_bytes == estimator.weight_bytes(cfg, "bf16") == 2 * P
    assert c.weight_bytes == 2 * (P - V * h)
    norms = (2 * cfg.num_hidden_layers + 1) * h
    assert c.flops_per_token == 2 * (P - V * h - norms)
    assert c.kv_bytes_per_token == 128 * 1024  # docs/formulas.md: 128 KiB per token in bf16
    assert c.attn_flops_per_position == 4 * 32 * 32 * 128
    # quantized weights: fewer bytes, the same number of multiply-adds (NF4 dequantizes inside the
    # kernel; LLM.int8 multiplies int8 x int8 with its outlier columns in 16-bit)
    q = roofline.decode_cost(cfg, "nf4")
    assert q.flops_per_token == c.flops_per_token and q.weight_bytes < c.weight_bytes / 3
    assert q.weight_bytes == estimator.weight_bytes(cfg, "nf4") - 2 * V * h


def test_tied_head_reads_the_table():
    c = roofline.decode_cost("qwen2.5-0.5b")
    assert c.weight_bytes == c.resident_bytes  # the tied table is the head: all of it is read
    g = roofline.decode_cost("gpt2")  # tied wte read by the head; wpe only looked up
    cfg = zoo.load_config("gpt2")
    assert g.resident_bytes - g.weight_bytes == 2 * cfg.n_positions * cfg.n_embd


def test_roofline_regimes_and_batch():
    c = roofline.decode_cost("llama-3.1-8b")
    h100 = roofline.card("h100-sxm")
    one = roofline.decode_tokens_per_s(c, h100)
    assert one == pytest.approx(h100.bandwidth / c.weight_bytes)  # batch 1, no context
    assert roofline.regime(c, h100) == "memory-bound"
    # bf16 decode does ~1 FLOP per byte per sequence: compute-bound only past the ridge
    assert roofline.arithmetic_intensity(c, batch=8) == pytest.approx(8, rel=0.02)
    assert roofline.regime(c, h100, batch=512) == "compute-bound"
    tps = [roofline.decode_tokens_per_s(c, h100, batch=b) for b in (1, 16, 256, 1024)]
    assert tps == sorted(tps)
    assert tps[-1] == pytest.approx(h100.flops / c.flops_per_token)  # the compute roof
    # a long KV cache keeps the intensity low however large the batch
    assert roofline.arithmetic_intensity(c, batch=10_000, context=8192) < 20
    assert roofline.step_bytes(c, batch=2, context=10) == c.weight_bytes + 20 * 131072
    assert roofline.step_flops(c, batch=2, context=0) == 2 * c.flops_per_token


def test_max_batch_prefill_split_predict():
    c = roofline.decode_cost("llama-3.1-8b")
    b = roofline.max_batch(c, "h100-sxm", context=2048)
    free = 80e9 - c.resident_bytes
    assert b * 2048 * c.kv_bytes_per_token <= free < (b + 1) * 2048 * c.kv_bytes_per_token
    big = roofline.decode_cost({**_cfg_dict("llama-3.1-8b"), "num_hidden_layers": 400})
    assert roofline.max_batch(big, "rtx-4090", context=10) == 0
    pre = roofline.prefill_tokens_per_s(c, "h100-sxm", prompt=2048)
    assert pre > 50 * roofline.decode_tokens_per_s(c, "h100-sxm", context=2048)
    one = roofline.decode_tokens_per_s(c, "h100-sxm", context=512)
    kw = dict(context=512)
    assert roofline.split_tokens_per_s(c, "h100-sxm", n_cards=4, **kw) == pytest.approx(one)
    tp = roofline.split_tokens_per_s(c, "h100-sxm", n_cards=4, mode="tensor", **kw)
    assert tp == pytest.approx(4 * one)
    slow = roofline.split_tokens_per_s(
        c, "h100-sxm", n_cards=4, mode="tensor", allreduce_s=20e-6, **kw
    )
    assert one < slow < tp
    with pytest.raises(LabkitError, match="unknown split mode 'ring'"):
        roofline.split_tokens_per_s(c, "h100-sxm", n_cards=2, mode="ring")
    p = roofline.predict("llama-3.1-8b", "rtx-4090", dtype="nf4", batch=4, context=1024)
    assert p["fits"] and p["bound"] == "memory-bound"
    assert p["decode_tokens_per_s"] == pytest.approx(4 * p["per_sequence_tokens_per_s"])
    line = roofline.prediction_line(p, batch=4, context=1024)
    assert "tokens/s on RTX 4090" in line and "NOT" not in line
    p16 = roofline.predict("llama-3.1-8b", "rtx-4090", batch=64, context=8192)
    assert not p16["fits"] and "does NOT fit" in roofline.prediction_line(
        p16, batch=64, context=8192
    )


def _cfg_dict(name):
    return zoo.load_config(name).to_dict()


def test_bad_sizes():
    c = roofline.decode_cost("llama-3.1-8b")
    with pytest.raises(LabkitError, match="batch must be a positive integer"):
        roofline.step_bytes(c, batch=0)
    with pytest.raises(LabkitError, match="context must be an integer >= 0"):
        roofline.step_flops(c, context=-1)
    with pytest.raises(LabkitError, match="prompt must be >= 1"):
        roofline.prefill_tokens_per_s(c, "l40s", prompt=0)
    with pytest.raises(LabkitError, match="bandwidth and flops must be > 0"):
        roofline.machine(0, 1)
    m = roofline.machine(8e9, 9e10)
    assert m.bandwidth == pytest.approx(8e9) and m.flops == pytest.approx(9e10)
    assert m.ridge == pytest.approx(11.25)


def test_prefill_head_only_for_kept_logits_as_generate_runs_it():
    """generate() passes logits_to_keep=1: the output head runs for the last prompt token only,
    a plain forward for every one; the FLOPs transformers runs differ by exactly the head's."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    cfg = zoo.load_config("zoo-llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.ones(1, 12, dtype=torch.long)
    rows = []
    model.lm_head.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[-2]))
    with torch.no_grad(), FlopCounterMode(display=False) as gen:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        model(ids)
    assert rows == [1, 12]  # the head's input rows: generate's prefill, then the plain call
    c = roofline.decode_cost(cfg, "fp32")
    assert c.head_flops_per_token == 2 * model.lm_head.weight.numel()
    one = roofline.prefill_flops(c, prompt=12)  # logits_to_keep=1, generate's default
    every = roofline.prefill_flops(c, prompt=12, logits_to_keep=0)
    assert every - one == full.get_total_flops() - gen.get_total_flops()
    assert every - one == 11 * c.head_flops_per_token
    assert roofline.prefill_flops(c, prompt=12, logits_to_keep=99) == every  # clamped, as slicing
    assert roofline.prefill_flops(c, prompt=12, batch=3) == 3 * one
    # llama-3.1-8b, 2,048 tokens on an H100: the head once makes the compute-bound bound ~7% faster
    b16 = roofline.decode_cost("llama-3.1-8b")
    fast = roofline.prefill_tokens_per_s(b16, "h100-sxm", prompt=2048)
    slow = roofline.prefill_tokens_per_s(b16, "h100-sxm", prompt=2048, logits_to_keep=0)
    assert fast / slow == pytest.approx(
        roofline.prefill_flops(b16, prompt=2048, logits_to_keep=0)
        / roofline.prefill_flops(b16, prompt=2048)
    )
    assert 1.05 < fast / slow < 1.1
    assert roofline.prefill_bytes(b16, prompt=2048) == b16.weight_bytes + 2048 * 131072
    with pytest.raises(LabkitError, match="logits_to_keep must be an integer >= 0"):
        roofline.prefill_flops(c, prompt=4, logits_to_keep=-1)


def test_prefill_is_compute_bound_only_past_the_ridge():
    """A prefill's intensity grows with the prompt (about one FLOP per byte per token in bf16):
    a short prompt is memory-bound (its time is the weight read), a long one compute-bound."""
    c = roofline.decode_cost("llama-3.1-8b")
    h100 = roofline.card("h100-sxm")

    def intensity(p):
        return roofline.prefill_flops(c, prompt=p) / roofline.prefill_bytes(c, prompt=p)

    assert 0.8 * 128 < intensity(128) < 128  # about the prompt length
    short = roofline.prefill_tokens_per_s(c, h100, prompt=16)
    assert short == pytest.approx(16 * h100.bandwidth / roofline.prefill_bytes(c, prompt=16))
    long = roofline.prefill_tokens_per_s(c, h100, prompt=2048)
    assert long == pytest.approx(2048 * h100.flops / roofline.prefill_flops(c, prompt=2048))
    assert intensity(16) < h100.ridge < intensity(2048)
