"""labkit.memory.trace: live bytes over real CPU training steps, against the issue's figures and
against the states labkit.memory.measure reads from the real tensors."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from labkit import LabkitError
from labkit.memory import measure, trace
from labkit.models import zoo


def zoo_llama(impl: str):
    config = zoo.load_config("zoo-llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=impl == "foreach")
    return model, opt, config


def ids(config, b, s, seed=1):
    return torch.randint(
        3, config.vocab_size, (b, s), generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize(
    ("impl", "b", "s", "mb", "phase"),
    [
        ("foreach", 1, 8, 38.93, "optimizer"),
        ("single", 1, 8, 32.64, "optimizer"),
        ("single", 4, 128, 62.99, "backward"),
    ],
)
def test_the_issue_table(impl, b, s, mb, phase):
    """Issue 23's measurements of two AdamW steps of the zoo Llama (fp32, SDPA), reproduced."""
    model, opt, config = zoo_llama(impl)
    steps = trace.trace_training(model, opt, ids(config, b, s), steps=2)
    top = max(steps, key=lambda t: t.peak)
    assert (round(top.peak / 1e6, 2), top.peak_phase) == (mb, phase)
    assert sum(top.alive.values()) == top.peak


def test_categories_equal_the_real_states():
    """At foreach AdamW's peak: weights, gradients and state are the real tensors' bytes and the
    update's temporaries one more copy of the parameters; everything the step made is freed."""
    model, opt, config = zoo_llama("foreach")
    x = ids(config, 1, 8)
    first, later = trace.trace_training(model, opt, x, steps=2)
    states = measure.state_bytes(model, opt)
    weights = sum(p.numel() * 4 for p in model.parameters())
    buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
    a = later.alive
    assert a["weights"] == weights + buffers
    assert a["optimizer_state"] == states.optimizer
    assert a["gradients"] == a["temporaries"] == weights  # grads, then _foreach_sqrt's copy
    assert a["inputs"] == x.numel() * 8
    assert first.before["optimizer_state"] == 0 < later.before["optimizer_state"]
    # after zero_grad only weights, state and the ids are left
    assert later.timeline[-1] == weights + buffers + states.optimizer + x.numel() * 8
    assert later.phases[later.peak_index] == later.peak_phase == "optimizer"


def test_a_saved_tensor_stays_counted_after_its_python_tensor_is_gone():
    """Autograd keeps storages through shallow copies the dispatcher never sees: the tracker
    follows the storage (a finalizer on the StorageImpl), not the tensor object."""
    w = torch.randn(256, 256, requires_grad=True)
    tr = trace.StepTracker()
    tr.add(w, "w", "weights")
    with tr:
        y = (w @ w).exp()  # exp saves its output
        z = y.sum()
        del y
        held = tr.now
        z.backward()
        del z
    size = 256 * 256 * 4
    assert held == 2 * size + 4  # w, exp's output (only autograd holds it), the sum
    assert tr.now == 2 * size  # w and w.grad are left


def test_gradient_accumulation_and_outputs_dropped():
    """Two micro-batches: the second forward finds the first one's gradients; dropping the
    output before backward (as the Trainer does) lowers the backward peak by the logits."""
    model, opt, config = zoo_llama("single")
    x = [ids(config, 2, 64, seed) for seed in (1, 2)]
    acc = trace.trace_training(model, opt, x, steps=1)[0]
    assert acc.phase_alive["forward"]["gradients"] == sum(p.numel() * 4 for p in model.parameters())
    held = trace.trace_training(model, opt, x[0], steps=1)[0]
    dropped = trace.trace_training(model, opt, x[0], steps=1, outputs_alive=False)[0]
    logits = 2 * 64 * config.vocab_size * 4
    assert held.phase_peaks["backward"] - dropped.phase_peaks["backward"] >= logits


def test_bad_input_is_one_line():
    model, opt, config = zoo_llama("single")
    with pytest.raises(LabkitError, match="no micro-batch"):
        trace.trace_training(model, opt, [])
    with pytest.raises(LabkitError, match="steps must be"):
        trace.trace_training(model, opt, ids(config, 1, 4), steps=0)
    with pytest.raises(LabkitError, match="integer tensor"):
        trace.trace_training(model, opt, torch.randn(1, 4))
    model(input_ids=ids(config, 1, 4), labels=ids(config, 1, 4)).loss.backward()
    with pytest.raises(LabkitError, match="zero_grad"):
        trace.trace_training(model, opt, ids(config, 1, 4))


def test_the_timeline_figure():
    """labkit.memory.timeline draws one traced step with the predicted phase peaks (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.memory import peak, timeline

    model, opt, config = zoo_llama("foreach")
    step = trace.trace_training(model, opt, ids(config, 1, 8), steps=2)[1]
    got = peak.training_peak(config, precision="fp32", batch=1, seq=8, device="cuda")
    fig, ax = plt.subplots()
    timeline.plot_step(ax, step, got, "zoo Llama, foreach AdamW")
    spans = timeline.phase_spans(step)
    assert list(spans) == ["forward", "backward", "optimizer", "zero_grad"]
    assert "optimizer state" in timeline.alive_label(step.alive)
    assert len(ax.collections) >= 4  # phase spans and the predicted segments
    plt.close(fig)


def test_the_parts_box_lists_every_part_tied_with_the_last_shown():
    """A part as large as the third largest is listed too (gradients = weights in fp32), in MiB."""
    from labkit.memory import timeline

    alive = {"optimizer_state": 16 * 2**20, "weights": 8 * 2**20, "gradients": 8 * 2**20}
    alive |= {"temporaries": 8 * 2**20, "inputs": 2**10}
    label = timeline.alive_label(alive)
    assert label.count("\n") == 3 and "gradients 8.0 MiB" in label and "token ids" not in label
    assert timeline.alive_label({"weights": 3 * 2**20}) == "weights 3.0 MiB"
