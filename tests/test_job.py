"""labkit.memory.job and labkit.dtypes.Precision: one default per option, the checks, and the
errors that name parameters (re-spelled by whatever interface shows them)."""

import numpy as np
import pytest

from labkit import LabkitError
from labkit.dtypes import PRECISIONS, Precision
from labkit.memory.job import OptionError, TrainingJob


@pytest.mark.parametrize(
    ("name", "compute", "mixed", "weights", "words"),
    [
        ("fp32", "fp32", False, "fp32", "fp32"),
        ("bf16-mixed", "bf16", True, "fp32", "bf16 autocast"),
        ("fp16-mixed", "fp16", True, "fp32", "fp16 autocast"),
        ("bf16", "bf16", False, "bf16", "pure bf16"),
    ],
)
def test_precision_reads_its_regime(name, compute, mixed, weights, words):
    p = Precision(name)
    assert (p.compute, p.mixed, p.weights, p.words) == (compute, mixed, weights, words)
    assert TrainingJob(precision=name).precision == p


def test_every_precision_is_known_and_nothing_else():
    assert set(PRECISIONS) <= {p.name for p in map(Precision, (*PRECISIONS, "fp16"))}
    with pytest.raises(LabkitError, match="unknown precision 'fp8'"):
        TrainingJob(precision="fp8")


@pytest.mark.parametrize(
    ("method", "precision", "base", "weights", "regime"),
    [
        ("full", "bf16-mixed", None, "fp32", "bf16 autocast with fp32 master weights"),
        ("full", "bf16", None, "bf16", "pure bf16"),
        ("lora", "bf16-mixed", None, "bf16", "LoRA: bf16 base + fp32 adapters, bf16 autocast"),
        ("lora", "bf16-mixed", "fp32", "fp32", "LoRA: fp32 base + fp32 adapters, bf16 autocast"),
        ("lora", "fp32", None, "fp32", "LoRA: fp32 base + fp32 adapters, fp32"),
        (
            "lora",
            "bf16",
            None,
            "bf16",
            "LoRA: bf16 base + fp32 adapters, bf16 compute, no autocast",
        ),
        (
            "qlora",
            "bf16-mixed",
            None,
            "nf4",
            "QLoRA: NF4 base (double quantization) + fp32 adapters, bf16 autocast",
        ),
    ],
)
def test_one_default_base_and_its_regime(method, precision, base, weights, regime):
    job = TrainingJob(method=method, precision=precision, base_dtype=base)
    assert (job.weight_dtype, job.regime) == (weights, regime)


def test_adapters_are_fp32_under_fp32_and_16_bit_compute_under_autocast():
    assert TrainingJob(method="lora", precision="fp32", adapter_dtype="bf16").adapters == "fp32"
    assert TrainingJob(method="lora", adapter_dtype="bf16").adapters == "bf16"
    assert TrainingJob(method="lora").adapters_autocast
    assert not TrainingJob(method="lora", base_dtype="fp32").adapters_autocast
    assert not TrainingJob(method="lora", precision="bf16").adapters_autocast


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(method="qlora", precision="fp32"), "method='qlora' needs a 16-bit precision"),
        (dict(frozen_layers=2), "frozen_layers needs method='frozen'"),
        (dict(method="frozen", frozen_layers=-1), "frozen_layers must be an integer >= 0"),
        (dict(base_dtype="bf16"), "base_dtype applies to method='lora'"),
        (dict(method="lora", precision="fp32", base_dtype="fp16"), "base_dtype='fp16' needs"),
        (dict(method="lora", base_dtype="nf4"), "unknown base dtype 'nf4'"),
        (dict(batch=0), "batch must be a positive integer"),
        (dict(lora_r=0), "LoRA rank r must be a positive integer"),
        (dict(attention="flash"), "unknown attention 'flash'"),
    ],
)
def test_bad_options_are_one_line_naming_parameters(options, message):
    with pytest.raises(LabkitError) as err:
        TrainingJob(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_option_errors_are_spelled_by_the_interface():
    with pytest.raises(OptionError) as err:
        TrainingJob(method="qlora", precision="fp32")
    flags = err.value.spelled(lambda name, value: f"--{name} {value}".strip())
    assert flags == "--method qlora needs a 16-bit --precision (bf16-mixed, fp16-mixed or bf16)"


def test_of_builds_or_changes_a_job_and_refuses_unknown_options():
    job = TrainingJob.of(None, {"method": "lora", "batch": np.int64(4)})
    assert job == TrainingJob(method="lora", batch=4) and type(job.batch) is int
    assert TrainingJob.of(job, {"seq": 64}) == TrainingJob(method="lora", batch=4, seq=64)
    with pytest.raises(LabkitError, match="unknown training option 'r'"):
        TrainingJob.of(None, {"r": 8})
    with pytest.raises(LabkitError, match="frozen_layers must be between 0 and 2, got 3"):
        TrainingJob(method="frozen", frozen_layers=3).check_layers(2)
