"""labkit.memory.compare: each calculator's figure and its named gaps to labkit's total. The dry
run and accelerate rows are checked against the tools' own code; the DeepSpeed and rule rows'
gaps against the bytes their names describe, computed from the model's shapes; DeepSpeed's
formulas against its printed example."""

import math

import pytest

from labkit import LabkitError
from labkit.memory import compare, estimator, peak
from labkit.models import architecture, targets

SMALL = {
    "full": compare.Job("full", "qwen2.5-0.5b", batch=1, seq=64),
    "lora": compare.Job("lora", "qwen2.5-0.5b", method="lora", base_dtype="bf16", batch=1, seq=64),
    "inference": compare.Job("inf", "gpt2", kind="inference", batch=1, seq=64),
}


@pytest.mark.parametrize("kind", list(SMALL))
def test_rows_and_the_measured_and_accelerate_gaps(kind):
    """The dry run and accelerate rows, whose figures come from other code (fake tensors,
    accelerate's own functions), plus their named gaps are labkit's total to the byte."""
    job = SMALL[kind]
    rows = {r.source: r for r in compare.compare(job)}
    total = compare.labkit_breakdown(job).total
    assert next(iter(rows)) == compare.SUM_ROW and rows[compare.SUM_ROW].figure == total
    if kind != "inference":  # the second row: the step's peak, its gap to the sum named
        p = peak.training_peak(job.model, job.training(), impl="fused").peak
        assert rows[compare.PEAK_ROW].figure == p and rows[compare.PEAK_ROW].explained() == total
    assert (compare.PEAK_ROW in rows) == (kind != "inference")
    dry = "dry run (labkit's own prefill peak)" if kind == "inference" else "dry run (measured)"
    for source in (dry, "accelerate estimate-memory"):
        assert rows[source].explained() == total, (source, rows[source].explained() - total)
    assert ("DeepSpeed ZeRO-2 (1 GPU)" in rows) == (kind != "inference")


def _gap(row, prefix):
    (value,) = [v for k, v in row.gap.items() if k.startswith(prefix)]
    return value


def test_deepspeed_and_rule_gaps_are_what_their_names_say_full_fine_tuning():
    """Full fine-tuning under bf16 autocast keeps fp32 weights (4 B) plus 2-byte copies of the
    weights autocast casts, fp32 gradients (4) and AdamW's m, v (8) plus a 4-byte step per tensor.
    Each tool's per-parameter accounting, set against that, gives every named gap."""
    job = SMALL["full"]
    shapes = architecture.param_shapes(job.model)
    P, n_tensors = architecture.count_parameters(job.model), len(shapes)
    cast = estimator.autocast_cast_parameters(job.model, shapes)
    rows = {r.source: r for r in compare.compare(job)}
    z2 = rows["DeepSpeed ZeRO-2 (1 GPU)"]
    assert z2.figure == 2 * P + 18 * P  # DeepSpeed: 2 + 18 B for every parameter, one GPU
    assert _gap(z2, "weights") == 4 * P + 2 * cast - (2 + 4) * P  # 16-bit + fp32 master
    assert _gap(z2, "gradients") == 4 * P - (2 + 4) * P  # 16-bit + fp32 gradients
    assert _gap(z2, "optimizer") == 4 * n_tensors  # AdamW's step counters
    rule16 = rows["rule: 16 B/param (ZeRO's 2+2+12 = 8x fp16)"]
    assert rule16.figure == 16 * P
    assert _gap(rule16, "weights") == 4 * P + 2 * cast - 6 * P
    assert _gap(rule16, "gradients") == 4 * P - 2 * P  # fp32 gradients, not 16-bit
    assert _gap(rule16, "optimizer") == 4 * n_tensors
    rule12 = rows["rule: 12 B/param (2 + 2 + 8)"]
    assert rule12.figure == 12 * P
    assert _gap(rule12, "weights") == 4 * P + 2 * cast - 2 * P  # the fp32 master left out
    assert (_gap(rule12, "gradients"), _gap(rule12, "optimizer")) == (2 * P, 4 * n_tensors)
    b = compare.labkit_breakdown(job)
    for row in (z2, rule16, rule12):
        assert _gap(row, "activations left out") == b.activations
        assert _gap(row, "logits / loss buffer") == b.logits


def test_deepspeed_and_rule_gaps_are_what_their_names_say_lora():
    """LoRA on a bf16 base: 2 B per base weight, fp32 adapters (4 B) with their 2-byte autocast
    copies, fp32 adapter gradients and AdamW state. DeepSpeed counts every parameter of the peft
    model as trainable; "LoRA needs the 16-bit weights" counts the base alone."""
    job = SMALL["lora"]
    P = architecture.count_parameters(job.model)
    adapters = targets.trainable_shapes(job.model, "lora", r=8, targets="default")
    n, t = sum(math.prod(s) for s in adapters.values()), len(adapters)
    weights, grads, adam = 2 * P + (4 + 2) * n, 4 * n, 8 * n + 4 * t
    rows = {r.source: r for r in compare.compare(job)}
    z2 = rows["DeepSpeed ZeRO-2 (1 GPU)"]
    assert z2.figure == 20 * (P + n)
    assert _gap(z2, "weights") == weights - 6 * (P + n)
    assert _gap(z2, "gradients") == grads - 6 * (P + n)
    assert _gap(z2, "optimizer") == adam - 8 * (P + n)
    rule = rows["rule: LoRA = the 16-bit weights"]
    assert rule.figure == 2 * P
    assert (_gap(rule, "weights"), _gap(rule, "gradients"), _gap(rule, "optimizer")) == (
        6 * n,
        grads,
        adam,
    )


def test_dry_run_differs_by_transient_only_for_full_fine_tuning():
    job = SMALL["full"]
    b = compare.labkit_breakdown(job)
    dry = compare.dry_run_measure(job)
    assert (dry["weights"], dry["gradients"], dry["optimizer"]) == (
        b.weights,
        b.gradients,
        b.optimizer,
    )
    assert dry["activations"] + dry["logits"] == b.activations + b.logits
    assert b.total - dry["total"] == b.transient


def test_accelerate_takes_the_max_not_the_sum():
    acc = compare.accelerate_estimate("gpt2")
    parts = acc["training"]
    assert acc["training_figure"] == max(parts.values()) == parts["optimizer"]
    assert acc["total_size"] == 4 * (acc["numel"] + acc["buffers"])
    # AutoModel has no LM head: GPT-2's tied head adds nothing, its parameters are all there
    assert acc["numel"] == architecture.count_parameters("gpt2")
    binary, decimal = compare.printed_bytes(acc["printed_training"])  # "949.4 MB"
    assert abs(binary - acc["training_figure"]) <= 0.005 * 2**20 < abs(decimal - binary)
    assert compare.printed_bytes("9.20GB (ZeRO)") == (9.2 * 2**30, 9.2e9)
    # the row it reads is the float16 one (mixed precision: Adam 8 B/param); float32's is twice
    assert acc["dtype"] == "float16"
    fp32 = compare.accelerate_estimate("gpt2", "float32")
    assert fp32["training_figure"] == fp32["training"]["step"] == 2 * acc["training_figure"]
    with pytest.raises(LabkitError):
        compare.printed_bytes("lots")


def test_deepspeed_formulas_reproduce_its_printed_example():
    # DeepSpeed's estimate_zero3_model_states_mem_needs_all_live on t5-small (60M params, 16M
    # largest layer) prints 1.08GB (no offload), 0.17GB (optimizer offloaded), 0.06GB (all)
    p, ll = 60_506_624, 32128 * 512
    assert compare.deepspeed_printed(compare.zero3_model_states(p, ll)) == "1.08GB"
    assert compare.deepspeed_printed(compare.zero3_model_states(p, ll, 1, "optimizer")) == (
        "0.17GB"
    )
    assert compare.deepspeed_printed(compare.zero3_model_states(p, ll, 1, "all")) == "0.06GB"
    assert compare.zero2_model_states(10**9) == 20 * 10**9
    assert compare.zero2_model_states(10**9, 8) == 2 * 10**9 + 18 * 10**9 // 8
    assert compare.zero2_model_states(10**9, 8, cpu_offload=True) == 2 * 10**9
    assert compare.largest_layer_params("gpt2") == 50257 * 768
    with pytest.raises(LabkitError):
        compare.zero3_model_states(p, ll, 1, "disk")


def test_compare_unknown_job():
    with pytest.raises(LabkitError):
        compare.compare("pretraining")
