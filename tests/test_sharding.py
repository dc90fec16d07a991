"""labkit.memory.sharding: what DDP, ZeRO and FSDP keep per GPU, and the GPUs a job needs."""

import math

import pytest

from labkit import LabkitError
from labkit.memory import estimator, sharding
from labkit.models import architecture


def test_sharding_and_gpu_count():
    b = estimator.training_memory("llama-2-7b", batch=1, seq=512)
    z1, z2, z3 = (sharding.sharded(b, 8, f"zero{k}") for k in (1, 2, 3))
    assert sharding.sharded(b, 8, "ddp").total == b.total
    whole = 4 * len(architecture.param_shapes("llama-2-7b"))  # AdamW's step counters
    assert b.optimizer_unsharded == whole
    assert z1.optimizer == math.ceil((b.optimizer - whole) / 8) + whole
    assert z1.gradients == b.gradients
    assert z2.gradients == math.ceil(b.gradients / 8) and z2.weights == b.weights
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


def test_gpus_needed_refuses_what_never_fits():
    with pytest.raises(LabkitError, match="does not fit on 4096 GPUs"):
        sharding.gpus_needed(
            estimator.training_memory("llama-2-7b", precision="fp32"), 2**20, "ddp"
        )
    with pytest.raises(LabkitError, match="GPU memory in bytes must be a number"):
        sharding.gpus_needed(estimator.training_memory("tiny-llama"), 0)
