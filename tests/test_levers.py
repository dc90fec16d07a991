"""The levers of notebook 18 (labkit.memory.levers run them, labkit.memory.lever_peak predicts
them): each prediction held to the live-tensor trace of two real CPU steps of the same job.

Exact to the byte: every-n-th-layer checkpointing and GaLore at larger shapes. Within 2%, and why:
the chunked loss (the chunk's own small temporaries and which of its ops is widest are modelled
in bulk), the optimizer fused into backward, with a single-tensor or a fused AdamW per parameter
(one gradient and its update's temporaries are counted at every backward moment that holds a
gradient: an upper bound), GaLore at tiny shapes
(the SVD's temporaries are not modelled).
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from labkit import LabkitError
from labkit.memory import lever_runs, levers, peak, trace
from labkit.models import zoo

CFG = zoo.load_config("zoo-llama")


def _traced(b, s, *, lever, precision="fp32", lora=False):
    torch.manual_seed(0)
    model = zoo.load_model("zoo-llama").train()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    if lora:
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    if lever == "every2":
        levers.checkpoint_every(model, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    if lever == "in_backward":
        opt = levers.BackwardOptimizer(params, levers.adamw_single)
    elif lever == "in_backward_fused":
        opt = levers.BackwardOptimizer(params, levers.adamw_fused)
    elif lever == "galore":
        opt = levers.galore_optimizer(model, rank=4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    loss_fn = (lambda m, i: levers.chunked_loss(m, i)) if lever == "chunked" else None
    ids = torch.randint(3, CFG.vocab_size, (b, s), generator=torch.Generator().manual_seed(1))
    steps = trace.trace_training(model, opt, ids, steps=2, outputs_alive=False, loss_fn=loss_fn)
    return max(steps, key=lambda t: t.peak)


OPTIONS = {
    "chunked": {"loss": "chunked"},
    "every2": {"checkpointing": True, "checkpoint_every": 2},
    "in_backward": {"optimizer_in_backward": True},
    "in_backward_fused": {"optimizer_in_backward": True, "impl": "fused"},
    "galore": {"galore_rank": 4},
}
CASES = [
    ("chunked", 1, 8, "fp32", False, 0.0),
    ("chunked", 4, 128, "fp32", False, 0.02),
    ("chunked", 4, 128, "bf16", False, 0.02),
    ("chunked", 4, 128, "fp32", True, 0.02),
    ("every2", 1, 8, "fp32", False, 0.0),
    ("every2", 4, 128, "fp32", False, 0.0),
    ("in_backward", 1, 8, "fp32", False, 0.02),
    ("in_backward", 4, 128, "fp32", False, 0.0),
    ("in_backward_fused", 1, 8, "fp32", False, 0.02),
    ("in_backward_fused", 2, 32, "fp32", False, 0.02),
    ("galore", 1, 8, "fp32", False, 0.001),
    ("galore", 4, 128, "fp32", False, 0.0),
]


@pytest.mark.parametrize(("lever", "b", "s", "precision", "lora", "tol"), CASES)
def test_prediction_equals_the_trace(lever, b, s, precision, lora, tol):
    got = _traced(b, s, lever=lever, precision=precision, lora=lora)
    method = {"method": "lora", "lora_r": 8} if lora else {}
    pred = peak.training_peak(
        CFG,
        precision=precision,
        batch=b,
        seq=s,
        device="cpu",
        outputs_alive=False,
        **method,
        **{"impl": "single", **OPTIONS[lever]},
    )
    assert abs(pred.peak - got.peak) <= tol * got.peak, (pred.peak, got.peak)
    if tol == 0.0:
        assert pred.phase == got.peak_phase


def test_chunked_loss_equals_the_model_loss_and_gradients():
    torch.manual_seed(0)
    model = zoo.load_model("zoo-llama").train()
    ids = torch.randint(3, CFG.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    ref = model(input_ids=ids, labels=ids).loss
    ref.backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    got = levers.chunked_loss(model, ids, chunk=7)
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    for a, p in zip(g_ref, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)


def test_optimizer_in_backward_makes_the_same_step():
    ids = torch.randint(3, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    after = []
    for fused in (False, True):
        model = zoo.load_model("zoo-llama").train()
        if fused:
            opt = levers.BackwardOptimizer(model.parameters(), levers.adamw_single)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        for _ in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in model.parameters())
        after.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(after[0], after[1], rtol=0, atol=1e-7)


def test_stochastic_rounding_is_unbiased_and_keeps_tiny_updates():
    torch.manual_seed(0)
    x = torch.full((20000,), 1.0 + 2**-10)  # between two bf16 numbers: 1 and 1 + 2**-7
    out = levers.stochastic_round_(torch.empty(20000, dtype=torch.bfloat16), x)
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(out.float().mean().item() - x[0].item()) < 2e-4
    assert x.to(torch.bfloat16).float().unique().tolist() == [1.0]  # nearest rounding loses it


def test_galore_state_is_exact_after_a_step():
    from labkit.memory import lever_peak
    from labkit.models import targets

    model = zoo.load_model("zoo-llama").train()
    opt = levers.galore_optimizer(model, rank=4)
    ids = torch.randint(3, CFG.vocab_size, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    seen, total = set(), 0
    for t in trace._optimizer_tensors(opt):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    shapes = targets.trainable_shapes(CFG, "full")
    assert total == lever_peak.galore_state(shapes, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "fused"}, "loss"),
        ({"checkpoint_every": 2}, "needs checkpointing"),
        ({"checkpoint_every": 0, "checkpointing": True}, "whole number"),
        ({"offload_activations": True, "checkpointing": True, "device": "cpu"}, "cuda"),
        ({"optimizer_in_backward": True, "grad_accum": 2}, "accumulate"),
        ({"galore_rank": 8, "method": "lora"}, "full fine-tuning"),
        ({"galore_rank": 0}, "whole number"),
    ],
)
def test_bad_lever_options_are_one_line(kwargs, match):
    with pytest.raises(LabkitError, match=match) as err:
        peak.training_peak(CFG, **kwargs)
    assert "\n" not in str(err.value)


def test_levers_refused_for_a_dry_run_family():
    from conftest import tiny_config

    with pytest.raises(LabkitError, match="predicted where the peak is derived"):
        peak.training_peak(tiny_config("qwen3"), loss="chunked", batch=1, seq=8)


def test_bad_runtime_input_is_one_line():
    model = zoo.load_model("zoo-llama")
    ids = torch.randint(3, CFG.vocab_size, (1, 8))
    with pytest.raises(LabkitError, match="chunk"):
        levers.chunked_loss(model, ids, chunk=0)
    with pytest.raises(LabkitError, match="whole number"):
        levers.checkpoint_every(model, 0)


def test_lever_runs_checkpointing_is_the_same_step_and_bad_input_is_one_line():
    from labkit.memory import lever_runs

    d = lever_runs.gradient_difference("checkpointing", batch=1, seq=8)
    assert d == {"loss": 0.0, "grads": 0.0}
    with pytest.raises(LabkitError, match="lever") as err:
        lever_runs.build("fused_loss")
    assert "\n" not in str(err.value)
    with pytest.raises(LabkitError, match="rounds"):
        lever_runs.seconds_per_step(("baseline",), rounds=0)
    times = lever_runs.step_times(("baseline", "chunked_loss"), batch=1, seq=8, rounds=2)
    assert {n: len(t) for n, t in times.items()} == {"baseline": 2, "chunked_loss": 2}
    assert all(s > 0 for t in times.values() for s in t)
    with pytest.raises(LabkitError, match="step_difference"):
        lever_runs.gradient_difference("optimizer_in_backward")


def test_lever_runs_galore_uses_its_named_rank_and_seeds_share_the_weights():
    pytest.importorskip("galore_torch")
    from labkit.memory import lever_runs

    _, opt, _ = lever_runs.build("galore")
    ranks = {g["rank"] for g in opt.param_groups if "rank" in g}
    assert ranks == {lever_runs.GALORE_RANK}  # the rank notebook 18 prints for the traced run
    a, _, _ = lever_runs.build("baseline", seed=0)
    b, _, _ = lever_runs.build("baseline", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_fused_update_in_backward_adds_no_temporaries():
    """The single-tensor update per parameter holds two temporaries of the largest tensor; a fused
    AdamW per parameter none: its predicted peak is lower by exactly those, and on the trace too."""
    job = {"precision": "fp32", "batch": 1, "seq": 8, "device": "cpu", "outputs_alive": False}
    single, fused = (
        peak.training_peak(CFG, **job, optimizer_in_backward=True, impl=i)
        for i in ("single", "fused")
    )
    largest = max(p.numel() for p in zoo.load_model("zoo-llama").parameters())
    assert single.peak - fused.peak == 2 * largest * 4
    assert _traced(1, 8, lever="in_backward_fused").peak < _traced(1, 8, lever="in_backward").peak


def test_noise_seed_moves_only_pure_bf16s_rounding():
    """The batch's seed is the run's noise seed by default; another noise seed on the same batch
    changes pure bf16's stochastic rounding (so its losses) and leaves a deterministic lever's."""
    kw = {"seed": 0, "steps": 3, "batch": 1, "seq": 16}
    assert lever_runs.losses("pure_bf16", **kw) == lever_runs.losses(
        "pure_bf16", **kw, noise_seed=0
    )
    assert lever_runs.losses("pure_bf16", **kw) != lever_runs.losses(
        "pure_bf16", **kw, noise_seed=1
    )
    assert lever_runs.losses("baseline", **kw) == lever_runs.losses("baseline", **kw, noise_seed=1)


def test_rounded_away_counts_updates_lost_to_round_to_nearest():
    w = torch.full((100,), 1.0)  # bf16 spacing above 1.0 is 2**-7
    assert levers.rounded_away(w, 2**-9) == 1.0  # under half the spacing: lost
    assert levers.rounded_away(w, 2**-7) == 0.0  # a whole spacing: kept
    w = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.02
    assert levers.rounded_away(w, 1e-5) > levers.rounded_away(w, 1e-3)  # small steps lose more
    with pytest.raises(LabkitError, match="step"):
        levers.rounded_away(w, 0.0)


def test_galore_parts_sum_to_the_state_and_split_it():
    from labkit.memory import lever_peak

    shapes = {
        "model.embed_tokens.weight": (10, 6),
        "model.layers.0.mlp.up_proj.weight": (8, 6),
        "model.layers.0.input_layernorm.weight": (6,),
    }
    parts = lever_peak.galore_parts(shapes, 2, 4)
    assert parts == {
        "moments": 2 * 2 * 8 * 4,  # two moments, rank x the longer side
        "projections": 6 * 6 * 4,  # fp32: the whole min(m, n)^2 SVD factor
        "unprojected": 2 * (60 + 6) * 4,  # AdamW's two moments of the rest
    }
    assert sum(parts.values()) == lever_peak.galore_state(shapes, 2, 4)
    assert lever_peak.galore_parts(shapes, 2, 2)["projections"] == 2 * 6 * 2  # 16 bit: r x min
