"""labkit.memory.calculators: every calculator's gap to labkit is its named components, to the byte;
DeepSpeed's formulas reproduce its printed figures; the calculator's verdict and figure."""

import math
import sys

import matplotlib
import pytest

from labkit import LabkitError
from labkit.memory import calculators, estimator
from labkit.models import architecture

matplotlib.use("Agg")

SMALL = {
    "full": calculators.Job("full", "qwen2.5-0.5b", batch=1, seq=64),
    "lora": calculators.Job(
        "lora", "qwen2.5-0.5b", method="lora", base_dtype="bf16", batch=1, seq=64
    ),
    "inference": calculators.Job("inf", "gpt2", kind="inference", batch=1, seq=64),
}


@pytest.mark.parametrize("kind", list(SMALL))
def test_every_gap_is_its_named_components(kind):
    job = SMALL[kind]
    rows = calculators.compare(job)
    total = calculators.labkit_breakdown(job).total
    assert rows[0].source == "labkit estimate" and rows[0].figure == total
    for row in rows:
        assert row.explained() == total, (row.source, row.explained() - total)
    sources = {r.source for r in rows}
    assert "dry run (measured)" in sources and "accelerate estimate-memory" in sources
    assert ("DeepSpeed ZeRO-2 (1 GPU)" in sources) == (kind != "inference")


def test_dry_run_differs_by_transient_only_for_full_fine_tuning():
    job = SMALL["full"]
    b = calculators.labkit_breakdown(job)
    dry = calculators.dry_run_measure(job)
    assert (dry["weights"], dry["gradients"], dry["optimizer"]) == (
        b.weights,
        b.gradients,
        b.optimizer,
    )
    assert dry["activations"] + dry["logits"] == b.activations + b.logits
    assert b.total - dry["total"] == b.transient


def test_accelerate_takes_the_max_not_the_sum():
    acc = calculators.accelerate_estimate("gpt2")
    parts = acc["training"]
    assert acc["training_figure"] == max(parts.values()) == parts["optimizer"]
    assert acc["total_size"] == 4 * (acc["numel"] + acc["buffers"])
    # AutoModel has no LM head: GPT-2's tied head adds nothing, its parameters are all there
    assert acc["numel"] == architecture.count_parameters("gpt2")
    binary, decimal = calculators.printed_bytes(acc["printed_training"])  # "949.4 MB"
    assert abs(binary - acc["training_figure"]) <= 0.005 * 2**20 < abs(decimal - binary)
    assert calculators.printed_bytes("9.20GB (ZeRO)") == (9.2 * 2**30, 9.2e9)
    with pytest.raises(LabkitError):
        calculators.printed_bytes("lots")


def test_deepspeed_formulas_reproduce_its_printed_example():
    # DeepSpeed's estimate_zero3_model_states_mem_needs_all_live on t5-small (60M params, 16M
    # largest layer) prints 1.08GB (no offload), 0.17GB (optimizer offloaded), 0.06GB (all)
    p, ll = 60_506_624, 32128 * 512
    assert calculators.deepspeed_printed(calculators.zero3_model_states(p, ll)) == "1.08GB"
    assert calculators.deepspeed_printed(calculators.zero3_model_states(p, ll, 1, "optimizer")) == (
        "0.17GB"
    )
    assert (
        calculators.deepspeed_printed(calculators.zero3_model_states(p, ll, 1, "all")) == "0.06GB"
    )
    assert calculators.zero2_model_states(10**9) == 20 * 10**9
    assert calculators.zero2_model_states(10**9, 8) == 2 * 10**9 + 18 * 10**9 // 8
    assert calculators.zero2_model_states(10**9, 8, cpu_offload=True) == 2 * 10**9
    assert calculators.largest_layer_params("gpt2") == 50257 * 768
    with pytest.raises(LabkitError):
        calculators.zero3_model_states(p, ll, 1, "disk")


def test_calculate_verdict_and_sharding():
    b, verdict = calculators.calculate(model="gpt2", method="full", seq=1024, gpu_gib=80)
    assert verdict.startswith("fits on 1 x 80 GiB")
    _, verdict = calculators.calculate(model="llama-3.1-8b", method="full", gpu_gib=80)
    assert verdict.startswith("does not fit on 1 x 80 GiB")
    one, _ = calculators.calculate(model="llama-3.1-8b", method="full", gpus=8, zero=0)
    z3, _ = calculators.calculate(model="llama-3.1-8b", method="full", gpus=8, zero=3)
    assert z3.total < one.total and z3.weights == math.ceil(one.weights / 8)
    inf, _ = calculators.calculate(model="llama-3.1-8b", method="inference", seq=8192)
    assert inf.kv_cache == estimator.kv_cache_bytes("llama-3.1-8b", 4, 8192)


@pytest.mark.parametrize(
    "kwargs",
    [dict(zero=5), dict(method="prefix"), dict(precision="fp8"), dict(gpu_gib=0), dict(gpus=0)],
)
def test_calculate_bad_input_is_one_line(kwargs):
    with pytest.raises(LabkitError) as err:
        calculators.calculate(model="gpt2", seq=1024, **kwargs)
    assert "\n" not in str(err.value)


def test_compare_unknown_job():
    with pytest.raises(LabkitError):
        calculators.compare("pretraining")


def test_figure_names_the_verdict():
    fig = calculators.figure(model="gpt2", method="full", seq=1024, gpu_gib=1)
    assert "does not fit on 1 x 1 GiB" in fig.axes[0].get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_widget_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(LabkitError, match="ipywidgets"):
        calculators.widget()


def test_widget_builds_its_controls_with_ipywidgets():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    shown = calculators.widget()
    names = {c.description for c in shown.widget.children if hasattr(c, "description")}
    assert {"model", "method", "precision", "gpus", "gpu_gib"} <= names
    plt.close("all")
