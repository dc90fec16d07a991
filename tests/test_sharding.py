"""labkit.memory.sharding: what DDP, ZeRO and FSDP keep per GPU, and the GPUs a job needs."""

import math

import pytest

from labkit import LabkitError
from labkit.memory import compare, estimator, sharding
from labkit.memory.job import Breakdown
from labkit.models import architecture, zoo

GiB = 2**30
STAGES = ("ddp", "zero1", "zero2", "zero3")


def test_sharding_and_gpu_count():
    b = estimator.training_memory("llama-2-7b", batch=1, seq=512)
    z1, z2, z3 = (sharding.sharded(b, 8, f"zero{k}") for k in (1, 2, 3))
    assert sharding.sharded(b, 8, "ddp").total == b.total
    whole = 4 * len(architecture.param_shapes("llama-2-7b"))  # AdamW's step counters
    assert b.optimizer_unsharded == whole
    assert z1.optimizer == math.ceil((b.optimizer - whole) / 8) + whole
    assert z1.gradients == b.gradients
    # bf16 autocast: the fp32 master weights go with the optimizer state from ZeRO-1 on, the
    # 16-bit copies autocast makes stay whole until ZeRO-3
    assert b.master_weights == 4 * b.trainable_parameters
    copies = b.weights - b.master_weights
    assert z1.weights == z2.weights == copies + math.ceil(b.master_weights / 8)
    assert z2.gradients == math.ceil(b.gradients / 8)
    assert z3.weights == math.ceil(b.weights / 8)
    assert z3.total < z2.total < z1.total < b.total
    assert sharding.round_to_nodes(17) == 24 and sharding.round_to_nodes(5) == 5
    n = sharding.gpus_needed(b, 80 * 2**30, "zero3")
    assert sharding.sharded(b, n, "zero3").total <= 80 * 2**30
    assert n == 1 or sharding.sharded(b, n - 1, "zero3").total > 80 * 2**30 or n > 8


def test_fsdp_keeps_the_step_counters_whole_as_measured_on_two_ranks():
    """notebook 03's two-process FSDP2 run measured 920,916 B of AdamW state per rank for
    tiny-llama in fp32: half the moments plus every tensor's 4-byte step counter."""
    b = estimator.training_memory("tiny-llama", precision="fp32", batch=1, seq=8)
    assert b.optimizer == 1_841_748
    assert sharding.sharded(b, 2, "fsdp").optimizer == 920_916


def test_zero_stages_are_one_mapping():
    assert [sharding.strategy(z) for z in (0, 1, 2, 3)] == ["ddp", "zero1", "zero2", "zero3"]
    assert sharding.STRATEGIES == ("ddp", "zero1", "zero2", "zero3", "fsdp")
    b = estimator.training_memory("tiny-llama", precision="fp32", batch=1, seq=8)
    fsdp, z3 = sharding.sharded(b, 4, "fsdp"), sharding.sharded(b, 4, "zero3")
    parts = ("weights", "gradients", "optimizer", "total")
    assert [getattr(fsdp, k) for k in parts] == [getattr(z3, k) for k in parts]
    for bad in (4, -1, True, "3"):
        with pytest.raises(LabkitError, match="unknown ZeRO stage"):
            sharding.strategy(bad)


def test_estimator_keeps_the_names_notebooks_call():
    assert estimator.sharded is sharding.sharded and estimator.gpus_needed is sharding.gpus_needed
    assert estimator.round_to_nodes is sharding.round_to_nodes
    assert estimator.fsdp_gathered is sharding.fsdp_gathered


def test_gpus_needed_refuses_what_never_fits():
    with pytest.raises(LabkitError, match="does not fit on 4096 GPUs"):
        sharding.gpus_needed(
            estimator.training_memory("llama-2-7b", precision="fp32"), 2**20, "ddp"
        )
    with pytest.raises(LabkitError, match="GPU memory in bytes must be a number"):
        sharding.gpus_needed(estimator.training_memory("tiny-llama"), 0)


def _zero_paper(P: int) -> Breakdown:
    """Mixed-precision Adam as the ZeRO paper counts it (§3.1, K = 12): 16-bit weights (2·P) and
    gradients (2·P), fp32 master weights (4·P, counted with the weights as labkit counts them)
    and m, v (8·P); no step counters, no activations."""
    return Breakdown(
        parameters=P,
        trainable_parameters=P,
        weights=6 * P,
        gradients=2 * P,
        optimizer=8 * P,
        activations=0,
        logits=0,
        kv_cache=0,
        transient=0,
        total=16 * P,
        master_weights=4 * P,
    )


def _deepspeed(P: float, N: int, K: int = 12, w16: float = 2, g: float = 2) -> dict[str, float]:
    """DeepSpeed's per-stage model states per GPU (ZeRO paper §5, Figure 1): bytes per parameter
    ``w16`` for the 16-bit weights, ``g`` for the gradients, ``K`` for the optimizer state."""
    return {
        "ddp": (w16 + g + K) * P,
        "zero1": w16 * P + g * P + K * P / N,
        "zero2": w16 * P + (g + K) * P / N,
        "zero3": (w16 + g + K) * P / N,
    }


def test_zero_stages_shard_what_deepspeed_shards_the_papers_figure():
    """The ZeRO paper's Figure 1: 7.5B parameters on 64 GPUs, K = 12: 120 GB (DDP), 31.4 GB
    (P_os), 16.6 GB (P_os+g), 1.9 GB (P_os+g+p), GB = 1e9 bytes."""
    P, N = 7_500_000_000, 64
    b = _zero_paper(P)
    per_gpu = {s: sharding.sharded(b, N, s).total for s in STAGES}
    for stage, want in _deepspeed(P, N).items():
        assert per_gpu[stage] == pytest.approx(want, abs=2), stage
    assert [round(per_gpu[s] / 1e9, 1) for s in STAGES] == [120.0, 31.4, 16.6, 1.9]
    # the master copy is sharded from ZeRO-1 on: ZeRO-1 holds 2 + 2 + 12/64, not 2 + 4 + 2 + 8/64
    assert sharding.sharded(b, N, "zero1").weights == 2 * P + 4 * P // N


@pytest.mark.parametrize("n_gpus", [2, 8, 64])
def test_zero_stages_of_a_real_job_follow_deepspeeds_per_stage_formulas(n_gpus):
    """Llama-3.1-8B, full fine-tuning under bf16 autocast: labkit's bytes per part in DeepSpeed's
    per-stage formulas (16-bit weights = autocast's copies, fp32 gradients, K = master + m + v),
    each rank keeping AdamW's step counters whole."""
    b = estimator.training_memory("llama-3.1-8b", batch=1, seq=512)
    P = b.trainable_parameters
    counters = b.optimizer_unsharded
    w16 = (b.weights - b.master_weights) / P
    K = (b.master_weights + b.optimizer - counters) / P
    assert K == 12 and b.gradients == 4 * P
    want = _deepspeed(P, n_gpus, K=K, w16=w16, g=4)
    for stage in STAGES:
        z = sharding.sharded(b, n_gpus, stage)
        states = z.weights + z.gradients + z.optimizer - counters
        assert states == pytest.approx(want[stage], abs=4), stage
        assert z.total - states - counters == b.activations + b.logits + b.transient


def test_zero2_of_8b_on_8_gpus_sits_between_the_paper_and_deepspeeds_estimator():
    """Issue 23: 8B on 8 GPUs used to read 55.1 GiB of model states under ZeRO-2 (fp32 master
    kept whole). DeepSpeed's estimator says 2P + 18P/N (16-bit and fp32 gradients), the paper
    2P + 14P/N (16-bit gradients); autocast's fp32 gradients land in between."""
    b = estimator.training_memory("llama-3.1-8b", batch=1, seq=512)
    z2 = sharding.sharded(b, 8, "zero2")
    states = z2.weights + z2.gradients + z2.optimizer
    P = b.parameters
    assert (2 + 14 / 8) * P < states < compare.zero2_model_states(P, 8)
    assert 28.5 * GiB < states < 29.5 * GiB


def test_no_master_copy_in_fp32_or_pure_bf16_and_loras_adapters_are_theirs():
    """fp32 and pure bf16 keep no separate master copy: ZeRO-1/2 leave the weights whole (what
    notebook 15's fp32 FSDP2 run is compared with); LoRA under autocast shards only the fp32
    adapters, never the frozen base."""
    for precision in ("fp32", "bf16"):
        b = estimator.training_memory("tiny-llama", precision=precision, batch=1, seq=8)
        assert b.master_weights == 0
        assert sharding.sharded(b, 4, "zero2").weights == b.weights
    lora = estimator.training_memory("llama-2-7b", method="lora", batch=1, seq=512)
    assert lora.master_weights == 4 * lora.trainable_parameters
    z1 = sharding.sharded(lora, 8, "zero1")
    assert z1.weights == lora.weights - lora.master_weights + lora.master_weights // 8


def test_fsdp_keeps_no_bf16_copy_under_autocast():
    """FSDP2's bf16 MixedPrecisionPolicy casts at the gather: fp32 shards only, 16 B/param of
    model states where zero3 (a sharded 16-bit copy too) counts 18."""
    b = estimator.training_memory("llama-3.1-8b", precision="bf16-mixed", batch=1, seq=512)
    p = architecture.count_parameters(zoo.load_config("llama-3.1-8b"))
    fsdp, z3 = sharding.sharded(b, 8, "fsdp"), sharding.sharded(b, 8, "zero3")
    copy = b.weights - b.master_weights  # the 16-bit copy
    assert copy > 0 and fsdp.weights == math.ceil(b.master_weights / 8)
    assert z3.weights - fsdp.weights == pytest.approx(copy / 8, abs=1)
    assert z3.total - fsdp.total == z3.weights - fsdp.weights
    assert (fsdp.gradients, fsdp.optimizer) == (z3.gradients, z3.optimizer)
    states = fsdp.weights + fsdp.gradients + fsdp.optimizer
    assert states == pytest.approx(16 * p / 8, rel=0.01)


def test_fsdp_gathered_is_the_root_and_three_layers_in_bf16():
    cfg = zoo.load_config("llama-3.1-8b")
    h, v, i, kv = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.num_key_value_heads
    head_dim = h // cfg.num_attention_heads
    layer = 2 * h * h + 2 * h * kv * head_dim + 3 * h * i + 2 * h  # q, o; k, v; MLP; two norms
    root = 2 * v * h + h  # untied embedding and head, final norm
    assert sharding.fsdp_gathered(cfg) == 2 * (root + 3 * layer)
    assert sharding.fsdp_gathered(cfg, 4) == 2 * sharding.fsdp_gathered(cfg)
    with pytest.raises(LabkitError, match="bytes per parameter"):
        sharding.fsdp_gathered(cfg, 0)
    gpt2 = zoo.load_config("gpt2")  # blocks named transformer.h.N: found too
    shapes = architecture.param_shapes(gpt2)
    h0 = sum(math.prod(s) for n, s in shapes.items() if ".h.0." in n)
    rest = sum(math.prod(s) for n, s in shapes.items() if ".h." not in n)
    assert sharding.fsdp_gathered(gpt2) == 2 * (rest + 3 * h0)


def test_regime_total_gives_notebook_01s_three_regimes():
    b = estimator.training_memory("llama-3.1-8b", batch=4, seq=2048, checkpointing=True)
    p = architecture.count_parameters("llama-3.1-8b")
    s = {k: sharding.sharded(b, 8, k) for k in (*STAGES, "fsdp")}
    got = {r: {k: sharding.regime_total(b, 8, k, r) for k in STAGES} for r in sharding.REGIMES}
    assert got["megatron"] == {
        "ddp": b.total,
        "zero1": s["zero1"].total,
        "zero2": None,
        "zero3": None,
    }
    # DeepSpeed's bf16 mode: 2-byte gradients, half of this job's fp32 ones
    assert got["deepspeed"]["zero2"] == s["zero2"].total - s["zero2"].gradients // 2
    # plain PyTorch: ZeRO-1 keeps the module's fp32 weights whole, 7/8 of m and v go
    assert got["pytorch"]["zero1"] - got["pytorch"]["ddp"] == s["zero1"].optimizer - b.optimizer
    # ZeRO-2 is FSDP's SHARD_GRAD_OP: a whole bf16 copy of every parameter on top of 16/N
    assert got["pytorch"]["zero2"] == s["fsdp"].total + 2 * p == got["pytorch"]["zero3"] + 2 * p
    with pytest.raises(LabkitError, match="regime"):
        sharding.regime_total(b, 8, "zero1", "colossal")
    fp32 = estimator.training_memory("tiny-llama", precision="fp32", batch=1, seq=8)
    with pytest.raises(LabkitError, match="no fp32 master copy"):
        sharding.regime_total(fp32, 8, "zero1", "pytorch")
