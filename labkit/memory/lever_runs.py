"""Each lever of notebook 18 run on the course model (``zoo-llama``, CPU, the same job before and
after): its traced peak (:mod:`labkit.memory.trace`), its time per step, and what it does to the
training (the same step within a tolerance, or a different loss after a few steps).

The job: AdamW (torch's single-tensor loop, what it picks on a CPU), fp32, the loss returned
alone as transformers' Trainer does (``outputs_alive=False``), random token ids of a fixed seed.
Each name of :data:`RUNS` changes one thing of it (:func:`build`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from labkit import LabkitError
from labkit.checks import choice
from labkit.memory import levers, trace
from labkit.models import zoo

MODEL = "zoo-llama"
#: The levers run here; ``baseline`` is the job without any.
RUNS = (
    "baseline",
    "chunked_loss",
    "checkpointing",
    "checkpoint_every_2",
    "optimizer_in_backward",
    "adamw8bit",
    "adafactor",
    "galore",
    "pure_bf16",
)
#: Levers whose step is the baseline's (within float rounding); the others change the training.
EXACT = ("chunked_loss", "checkpointing", "checkpoint_every_2", "optimizer_in_backward")
LR = 1e-3
#: GaLore's projection rank on the course model (its matrices are small; 8B plans use 128).
GALORE_RANK = 4


def _optimizer(name: str, model: torch.nn.Module) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "optimizer_in_backward":
        return levers.BackwardOptimizer(params, levers.adamw_single)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=LR)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=LR, relative_step=False, scale_parameter=False)
    if name == "galore":
        return levers.galore_optimizer(model, rank=GALORE_RANK, lr=LR)
    if name == "pure_bf16":
        return levers.StochasticAdamW(params, lr=LR)
    return torch.optim.AdamW(params, lr=LR, foreach=False)


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, Any, Callable | None]:
    """(model, optimizer, loss_fn or None) of the course job with lever ``name`` on."""
    choice("lever", name, RUNS)
    torch.manual_seed(seed)
    model = zoo.load_model(MODEL).train()
    if name == "pure_bf16":
        model = model.to(torch.bfloat16)
    if name in {"checkpointing", "checkpoint_every_2"}:
        levers.checkpoint_every(model, 1 if name == "checkpointing" else 2)
    loss_fn = levers.chunked_loss if name == "chunked_loss" else None
    return model, _optimizer(name, model), loss_fn


def ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    """Random token ids of the course model's vocabulary (a fixed generator seed)."""
    vocab = zoo.load_config(MODEL).vocab_size
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def traced_peak(name: str, batch: int = 4, seq: int = 128) -> trace.StepTrace:
    """The traced step with the largest peak of two real steps (the second finds the state)."""
    model, opt, loss_fn = build(name)
    steps = trace.trace_training(
        model, opt, ids(batch, seq), steps=2, outputs_alive=False, loss_fn=loss_fn
    )
    return max(steps, key=lambda t: t.peak)


def _step(model: torch.nn.Module, opt: Any, loss_fn: Callable | None, x: torch.Tensor) -> float:
    loss = loss_fn(model, x) if loss_fn else model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def step_times(
    names: tuple[str, ...] = RUNS, batch: int = 4, seq: int = 128, rounds: int = 3
) -> dict[str, list[float]]:
    """Seconds of each lever's step in each of ``rounds`` rounds, after one warm-up step each: a
    round is one step of every lever in turn (interleaving spreads any slow spell of the machine
    over all levers), so round ``i`` of two levers can be compared, and the rounds' range shows
    how far one timing can be trusted."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise LabkitError(f"rounds must be a whole number >= 1, got {rounds!r}")
    x = ids(batch, seq)
    jobs = {name: build(name) for name in names}
    for model, opt, loss_fn in jobs.values():
        _step(model, opt, loss_fn, x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, (model, opt, loss_fn) in jobs.items():
            t = time.perf_counter()
            _step(model, opt, loss_fn, x)
            times[name].append(time.perf_counter() - t)
    return times


def seconds_per_step(
    names: tuple[str, ...] = RUNS, batch: int = 4, seq: int = 128, rounds: int = 3
) -> dict[str, float]:
    """Seconds per training step of each lever: the fastest of its :func:`step_times` rounds
    (the least disturbed by whatever else the machine runs)."""
    return {n: min(t) for n, t in step_times(names, batch, seq, rounds).items()}


def losses(
    name: str,
    *,
    seed: int = 0,
    steps: int = 10,
    batch: int = 2,
    seq: int = 64,
    noise_seed: int | None = None,
) -> list:
    """The loss at each of ``steps`` training steps on one fixed batch (seed: the batch, drawn
    with generator seed ``100 + seed``; the weights load the same for every seed, so two levers
    on one seed see the same batch). ``noise_seed`` is torch's seed for the run's randomness
    (pure bf16's stochastic rounding), the batch's ``seed`` when None: varied on one batch, it
    measures how far that randomness alone moves the loss."""
    model, opt, loss_fn = build(name, seed)
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
    x = ids(batch, seq, seed=100 + seed)
    return [_step(model, opt, loss_fn, x) for _ in range(steps)]


def step_difference(name: str, batch: int = 2, seq: int = 32, steps: int = 2) -> dict[str, float]:
    """How far lever ``name``'s training is from the baseline's after ``steps`` steps on the same
    batch: the largest absolute difference of the losses and of the weights."""
    out = []
    for run in ("baseline", name):
        model, opt, loss_fn = build(run)
        x = ids(batch, seq)
        got = [_step(model, opt, loss_fn, x) for _ in range(steps)]
        weights = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        out.append((torch.tensor(got), weights))
    (l0, w0), (l1, w1) = out
    return {"loss": (l0 - l1).abs().max().item(), "weights": (w0 - w1).abs().max().item()}


def gradient_difference(name: str, batch: int = 2, seq: int = 32) -> dict[str, float]:
    """One forward and backward of lever ``name`` and of the baseline on the same batch: the
    absolute difference of the losses, and the largest difference of a gradient relative to the
    largest baseline gradient (for a lever that keeps its gradients: not the optimizer fused
    into backward, which frees them; compare its weights with :func:`step_difference`)."""
    if name == "optimizer_in_backward":
        raise LabkitError("optimizer_in_backward frees each gradient; use step_difference")
    out = []
    for run in ("baseline", name):
        model, _, loss_fn = build(run)
        x = ids(batch, seq)
        loss = loss_fn(model, x) if loss_fn else model(input_ids=x, labels=x).loss
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        out.append((loss.item(), grads))
    (l0, g0), (l1, g1) = out
    return {"loss": abs(l0 - l1), "grads": ((g0 - g1).abs().max() / g0.abs().max()).item()}
