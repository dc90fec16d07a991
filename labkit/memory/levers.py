"""The levers that move the peak of a training step, as real code on a real model (notebook 18):
the pieces a learner switches on, each measured by :mod:`labkit.memory.trace` and predicted by
:func:`labkit.memory.peak.training_peak`.

Where a library does it on a CPU, it is the library's: every-n-th-layer checkpointing and its
offload to host memory (transformers' ``activation_checkpointing_enable(every_n_layers=,
offload=)``), 8-bit AdamW (bitsandbytes), Adafactor (transformers), GaLore (galore-torch),
padding-free batches (transformers' ``DataCollatorWithFlattening``). Written here, and why:

- :func:`chunked_loss`, a linear cross-entropy over chunks of tokens that never holds the b·s·V
  logits: cut-cross-entropy's kernels and Liger's fused linear cross-entropy are Triton (GPU
  only), and cut-cross-entropy does not even import on a Linux machine without Triton (its
  ``torch_compile`` path lives in the same package); torchtune's chunked loss still computes
  every chunk of logits in forward and keeps them (it only upcasts one chunk at a time).
- :class:`BackwardOptimizer`, the optimizer step fused into backward: torch documents the
  pattern (``register_post_accumulate_grad_hook``, tutorial "How to save memory by fusing the
  optimizer step into the backward pass") but ships no class for it.
- :func:`stochastic_round_`, bf16 stochastic rounding for a pure-bf16 update: torchao's
  ``_AdamW(bf16_stochastic_round=True)`` runs its update through ``torch.compile``, which needs
  a C++ toolchain and tens of seconds on a CPU; the rounding itself is three integer ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from labkit import LabkitError

#: Tokens per chunk of :func:`chunked_loss` (Liger uses about V/h rows; any size gives the same
#: loss: only the size of the temporaries changes).
CHUNK_TOKENS = 256
IGNORE = -100


# ----------------------------------------------------------------------------- the loss wall
def _chunks(n: int, size: int) -> Iterable[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


class _ChunkedLinearCE(torch.autograd.Function):
    """sum over tokens of -log softmax(h·Wᵀ)[label], chunk by chunk; keeps h, W, the per-token
    log-sum-exp and the labels; backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):  # noqa: PLR0913 (autograd's signature)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for rows in _chunks(hidden.shape[0], chunk):
            z = torch.mm(hidden[rows], weight.t())
            if z.dtype != torch.float32:
                z = z.float()
            y = labels[rows]
            keep = y != IGNORE
            picked = z.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
            top = z.amax(1, keepdim=True)
            z.sub_(top).exp_()
            lse_rows = z.sum(1).log_().add_(top.squeeze(1))
            lse[rows] = lse_rows
            total += ((lse_rows - picked) * keep).sum()
        ctx.save_for_backward(hidden, weight, lse, labels)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, lse, labels = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for rows in _chunks(hidden.shape[0], ctx.chunk):
            z = torch.mm(hidden[rows], weight.t())
            if z.dtype != torch.float32:
                z = z.float()
            y = labels[rows]
            z.sub_(lse[rows].unsqueeze(1)).exp_()  # softmax
            z.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -torch.ones_like(lse[rows]).unsqueeze(1))
            z.mul_(((y != IGNORE) * grad_total).unsqueeze(1))
            if z.dtype != hidden.dtype:
                z = z.to(hidden.dtype)
            if need_h:
                torch.mm(z, weight, out=grad_h[rows])
            if need_w:
                grad_w.addmm_(z.t(), hidden[rows])
        return grad_h, grad_w, None, None


def shifted_labels(ids: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels of ``ids``: the next token at each position, ``-100`` at the last one (as
    transformers' loss shifts them), flattened to one row per token."""
    pad = torch.full_like(ids[:, :1], IGNORE)
    return torch.cat([ids[:, 1:], pad], dim=1).reshape(-1)


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the decoder stack, the output head) of a causal LM, through a peft wrapper."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    body = getattr(lm, getattr(lm, "base_model_prefix", "model"), None)
    if head is None or body is None:
        raise LabkitError(
            f"{type(lm).__name__} has no decoder stack and output head to chunk the loss over; "
            "accepted: a causal LM (LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, ...)"
        )
    return body, head


def chunked_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    chunk: int = CHUNK_TOKENS,
    num_items: int | None = None,
) -> torch.Tensor:
    """The causal-LM loss of ``ids`` computed without ever holding the b·s·V logits: the decoder's
    hidden states, then the head and the cross-entropy ``chunk`` tokens at a time, forward and
    backward. Equal to ``model(input_ids=ids, labels=ids).loss`` within float rounding.

    ``labels``: per-token labels (-100 ignored), default the shifted ids. ``num_items``: divide
    by this many tokens instead of this batch's own count (gradient accumulation done right:
    the tokens of all micro-batches, as transformers passes ``num_items_in_batch``)."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise LabkitError(f"chunk must be a whole number of tokens >= 1, got {chunk!r}")
    body, head = _parts(model)
    if getattr(head, "bias", None) is not None:
        raise LabkitError("chunked_loss needs an output head without bias; accepted: Llama-like")
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state
    labels = shifted_labels(ids) if labels is None else labels.reshape(-1)
    total = _ChunkedLinearCE.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, labels, chunk)
    count = num_items if num_items is not None else int((labels != IGNORE).sum())
    return total / max(count, 1)


# ----------------------------------------------------------------------------- optimizer memory
class BackwardOptimizer:
    """The optimizer step fused into backward: one optimizer per parameter, stepped by a
    ``register_post_accumulate_grad_hook`` as soon as its gradient is ready, which then frees the
    gradient. The gradients of a step never all exist at once. ``step()`` and ``zero_grad()`` do
    nothing (the hooks did it), so a training loop (or :func:`labkit.memory.trace.trace_training`)
    runs unchanged; ``state`` is every parameter's state. Not with gradient accumulation (the
    step would run on each micro-batch's gradient) nor gradient clipping (no global norm)."""

    def __init__(
        self, params: Iterable[torch.nn.Parameter], make: Callable[[list], torch.optim.Optimizer]
    ) -> None:
        self.optimizers: dict[torch.nn.Parameter, torch.optim.Optimizer] = {}
        self._hooks = []
        for p in params:
            if not p.requires_grad:
                continue
            self.optimizers[p] = make([p])
            self._hooks.append(p.register_post_accumulate_grad_hook(self._step))

    def _step(self, p: torch.nn.Parameter) -> None:
        opt = self.optimizers[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @property
    def state(self) -> dict[Any, dict[str, Any]]:
        return {p: opt.state[p] for p, opt in self.optimizers.items() if p in opt.state}

    def step(self) -> None:
        """Nothing left to do: each parameter was updated in backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing left to do: each gradient was freed after its update."""

    def remove(self) -> None:
        """Take the hooks off the parameters (a plain optimizer can train them again)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def adamw_single(params: list, lr: float = 1e-3) -> torch.optim.Optimizer:
    """torch's AdamW, single-tensor (the loop torch picks on a CPU), as :class:`BackwardOptimizer`
    builds one per parameter."""
    return torch.optim.AdamW(params, lr=lr, foreach=False)


def adamw_fused(params: list, lr: float = 1e-3) -> torch.optim.Optimizer:
    """torch's fused AdamW (one kernel, in place: no temporaries of the parameter's size), as
    :class:`BackwardOptimizer` can build one per parameter; runs on a CPU too."""
    return torch.optim.AdamW(params, lr=lr, fused=True)


def galore_optimizer(
    model: torch.nn.Module, rank: int = 4, update_gap: int = 200, lr: float = 1e-3
) -> torch.optim.Optimizer:
    """galore-torch's ``GaLoreAdamW``: the 2-D weights of the decoder blocks get AdamW moments of
    their gradient projected to ``rank`` (the projection matrix recomputed by an SVD every
    ``update_gap`` steps); every other parameter plain AdamW (as GaLore's own recipes do)."""
    from galore_torch import GaLoreAdamW

    low, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (low if p.dim() == 2 and ".layers." in name else rest).append(p)
    groups = [
        {"params": rest},
        {
            "params": low,
            "rank": rank,
            "update_proj_gap": update_gap,
            "scale": 1.0,
            "proj_type": "std",
        },
    ]
    # galore-torch 1.0 copies transformers' retired AdamW and warns on every construction; the
    # warning is about that copied class (GaLore ships no other), not about this call
    return GaLoreAdamW(groups, lr=lr, no_deprecation_warning=True)


# ----------------------------------------------------------------------------- pure bf16
def stochastic_round_(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Write the fp32 ``value`` into the bf16 ``target``, rounded up or down at random with the
    probability of its distance (unbiased: E[round(x)] = x), so small updates are not lost."""
    bits = value.float().view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    rounded = (bits + noise) & -65536  # keep the top 16 bits (sign, exponent, 7 mantissa bits)
    target.copy_(rounded.view(torch.float32))
    return target


def rounded_away(weights: torch.Tensor, step: float) -> float:
    """Share of ``weights`` that stay unchanged when an update of size ``step`` is added to their
    bf16 values and rounded to nearest (``p.copy_``, no stochastic rounding): the updates lost."""
    if not step > 0:
        raise LabkitError(f"step must be > 0, got {step}")
    w = weights.detach().to(torch.bfloat16)
    after = (w.float() + step).to(torch.bfloat16)
    return (after == w).float().mean().item()


class StochasticAdamW(torch.optim.AdamW):
    """torch's AdamW on pure-bf16 parameters with each update stochastically rounded into bf16:
    the update is computed on an fp32 copy of one parameter at a time, so the memory is pure
    bf16's (bf16 weights, gradients and moments) plus two fp32 copies of the largest tensor."""

    def __init__(self, params, lr: float = 1e-3, **kwargs) -> None:
        super().__init__(params, lr=lr, foreach=False, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                _adamw_sr(p, state, group)
        return None


def _adamw_sr(p: torch.Tensor, state: dict, group: dict) -> None:
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    g = p.grad.float()
    m = state["exp_avg"].float().lerp_(g, 1 - beta1)
    stochastic_round_(state["exp_avg"], m)
    v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
    stochastic_round_(state["exp_avg_sq"], v)
    del g
    denom = v.sqrt_().div_(math.sqrt(1 - beta2**t)).add_(group["eps"])
    new = p.float().mul_(1 - group["lr"] * group["weight_decay"])
    new.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))
    stochastic_round_(p, new)


# ----------------------------------------------------------------------------- activations
def checkpoint_every(model: torch.nn.Module, n: int, offload: bool = False) -> None:
    """transformers' activation checkpointing of every ``n``-th decoder layer (0, n, 2n, ...; the
    others keep their activations), non-reentrant; ``offload``: the checkpointed layers' inputs
    kept in (pinned) host memory with ``torch.autograd.graph.save_on_cpu`` (a GPU lever: on a
    CPU there is no device memory to free)."""
    import warnings

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LabkitError(f"n must be a whole number of layers >= 1, got {n!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False},
            every_n_layers=n,
            offload=offload,
        )
    if hasattr(model, "config"):
        model.config.use_cache = False
