"""labkit.memory.calculator: the notebook's calculator and the shared job -> breakdown -> verdict
path (``fit``)."""

import math
import sys

import matplotlib
import pytest

from labkit import LabkitError
from labkit.memory import calculator, estimator, peak

matplotlib.use("Agg")


def test_calculate_verdict_and_sharding():
    b, verdict = calculator.calculate(model="gpt2", method="full", seq=1024, gpu_gib=80)
    assert verdict.startswith("fits on 1 x 80 GiB")
    _, verdict = calculator.calculate(model="llama-3.1-8b", method="full", gpu_gib=80)
    assert verdict.startswith("does not fit on 1 x 80 GiB")
    one, _ = calculator.calculate(model="llama-3.1-8b", method="full", gpus=8, zero=0)
    z3, _ = calculator.calculate(model="llama-3.1-8b", method="full", gpus=8, zero=3)
    assert z3.total < one.total and z3.weights == math.ceil(one.weights / 8)
    inf, _ = calculator.calculate(model="llama-3.1-8b", method="inference", seq=8192)
    assert inf.kv_cache == estimator.kv_cache_bytes("llama-3.1-8b", 4, 8192)


def test_the_verdict_names_the_adamw_implementation_and_leaves_out_gpu_overheads():
    """foreach AdamW's temporary copy makes the optimizer step the peak; the Trainer's fused AdamW
    has none, so the same full fine-tune peaks lower, in backward: the verdict says which."""
    job = dict(model="llama-3.1-8b", method="full", gpu_gib=80)
    _, foreach = calculator.calculate(**job)
    _, fused = calculator.calculate(**job, impl="fused")
    assert "in optimizer" in foreach and foreach.endswith("(foreach AdamW, before GPU overheads)")
    assert "in backward" in fused and fused.endswith("(fused AdamW, before GPU overheads)")
    _, z3 = calculator.calculate(**job, gpus=8, zero=3)  # a per-GPU total: no implementation
    assert "AdamW" not in z3 and z3.endswith(
        "GiB per GPU (a sum of the sharded parts, not a peak) (41%) (before GPU overheads)"
    )
    with pytest.raises(LabkitError, match="AdamW implementation"):
        calculator.calculate(impl="apex")


def test_the_verdict_names_no_adamw_implementation_where_none_moves_the_peak():
    """The default LoRA job peaks in backward, where AdamW plays no part: every implementation
    gives the same peak, so the verdict does not name one."""
    verdicts = {i: calculator.calculate(impl=i)[1] for i in ("foreach", "fused", "single")}
    assert len(set(verdicts.values())) == 1
    v = verdicts["foreach"]
    assert "in backward" in v and "AdamW" not in v and v.endswith("(before GPU overheads)")


@pytest.mark.parametrize(
    "kwargs",
    [dict(zero=5), dict(method="prefix"), dict(precision="fp8"), dict(gpu_gib=0), dict(gpus=0)],
)
def test_calculate_bad_input_is_one_line(kwargs):
    with pytest.raises(LabkitError) as err:
        calculator.calculate(model="gpt2", seq=1024, **kwargs)
    assert "\n" not in str(err.value)


def test_figure_names_the_verdict():
    fig = calculator.figure(
        model="gpt2", method="full", batch=2, seq=1024, checkpointing=False, gpu_gib=1
    )
    title = fig.axes[0].get_title()
    assert "does not fit on 1 x 1 GiB" in title
    assert "full" in title and "batch 2 x 1024, no checkpointing" in title  # the job it drew
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert not any(lab.startswith("GPU less reserve") for lab in labels)  # 1 GiB: none left
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_adapters_names_the_rank_and_the_targets_the_job_trains():
    assert calculator.adapters() == "LoRA r=8 on q_proj, v_proj"  # the defaults: Llama, peft's q, v
    assert calculator.adapters(model="gpt2", method="qlora") == "LoRA r=8 on c_attn"
    assert calculator.adapters(method="full") == calculator.adapters(method="inference") == ""
    with pytest.raises(LabkitError, match="unknown method 'x'; accepted: full, lora"):
        calculator.adapters(method="x")
    with pytest.raises(LabkitError, match="unknown calculator setting 'rank'"):
        calculator.adapters(rank=4)
    import matplotlib.pyplot as plt

    fig = calculator.figure()  # the title says which adapters the bars count
    assert "LoRA r=8 on q_proj, v_proj, batch 4 x 2048" in fig.axes[0].get_title()
    plt.close(fig)


def test_figure_draws_the_card_less_the_reserve():
    import matplotlib.pyplot as plt

    fig = calculator.figure(gpu_gib=24)
    ax = fig.axes[0]
    xs = [line.get_xdata()[0] for line in ax.get_lines()]
    usable = 24 - peak.gpu_reserve() / 2**30
    assert any(abs(x - usable) < 1e-9 for x in xs)
    assert f"GPU less reserve {usable:.1f} GiB" in ax.get_legend_handles_labels()[1]
    plt.close(fig)


def test_figure_says_what_the_peak_adds_to_the_bars():
    import matplotlib.pyplot as plt

    fig = calculator.figure()  # LoRA 8B, checkpointing: peaks at the start of the loss backward
    text = next(t for t in fig.axes[0].texts if t.get_text().startswith("peak"))
    note = text.get_text()
    assert "2nd fp32 b·s·V gradient" in note and "recomputed block" in note
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(lab.startswith("peak ") for lab in labels)  # every line drawn is in the legend
    assert len(labels) == len(fig.axes[0].get_lines()) + sum(
        not lab.startswith(("GPU", "peak")) for lab in labels
    )
    fig.canvas.draw()  # the note sits below the axes: it covers no bar and no line
    renderer = fig.canvas.get_renderer()
    assert text.get_window_extent(renderer).y1 < fig.axes[0].get_window_extent(renderer).y0
    plt.close(fig)
    fig = calculator.figure(method="full", gpu_gib=80)  # foreach AdamW: the optimizer step
    note = next(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("peak"))
    assert "vs the bars" in note and "b·s·V" not in note
    plt.close(fig)


def test_figure_names_every_part_and_prints_the_sum():
    import matplotlib.pyplot as plt

    b, _ = calculator.calculate()  # LoRA 8B: gradients and optimizer state too thin to see
    fig = calculator.figure()
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "gradients (<0.1)" in labels and "optimizer state (<0.1)" in labels
    assert f"weights {b.weights / 2**30:.1f}" in labels
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"sum of the parts {b.total / 2**30:.1f} GiB" in texts
    plt.close(fig)


def test_widget_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(LabkitError, match="ipywidgets"):
        calculator.widget()


def test_widget_builds_its_controls_with_ipywidgets():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    shown = calculator.widget()
    names = {c.description for c in shown.widget.children if hasattr(c, "description")}
    assert {"model", "method", "precision", "gpus", "gpu_gib", "impl"} <= names
    plt.close("all")


def test_fit_says_how_many_gpus_and_never_zero():
    b = estimator.training_memory("llama-3.1-8b", batch=4, seq=2048, checkpointing=True)
    f = calculator.fit(b, gpus=1, zero=0, gpu_gib=80)
    assert not f.fits and f.gpus_needed == 3 and f.strategy == "ddp"
    sum_of_parts = "GiB per GPU (a sum of the sharded parts, not a peak)"
    assert f.verdict == f"does not fit on 1 x 80 GiB: {b.total / 2**30:.1f} {sum_of_parts} needed"
    on3 = calculator.fit(b, gpus=3, zero=3, gpu_gib=80)
    assert on3.fits and on3.per_gpu.total == estimator.sharded(b, 3, "zero3").total
    huge = estimator.training_memory("llama-3.1-8b", batch=10**6, seq=2048)
    assert calculator.fit(huge, gpu_gib=80).gpus_needed is None


def test_unknown_setting_is_one_line():
    with pytest.raises(LabkitError, match="unknown calculator setting 'gpu'"):
        calculator.calculate(gpu=4)
