"""Measure the memory of real training steps: the truth :mod:`labkit.memory.estimator` is held against.

CPU, exact:

- :func:`state_bytes` reads the bytes of weights, gradients and optimizer state from the real
  tensors after a real step (unique storages, so tied weights count once);
- :func:`saved_tensor_bytes` measures activations as what autograd keeps for backward, with
  ``torch.autograd.graph.saved_tensors_hooks``: every tensor an op saves is recorded once per
  storage (``untyped_storage().data_ptr()``, the storage's full ``nbytes``), parameters excluded.
  The pack hook keeps a reference until the step ends, so a freed storage's address is never
  reused and counted twice or not at all. The same function measures a model built under
  ``FakeTensorMode`` (no data, no math: :mod:`labkit.memory.dryrun`); a fake storage has no address, so
  storages are told apart there by their StorageImpl (:func:`storage_key`), which views share.

Definition of the activation figure (what ``activations + logits`` in :mod:`labkit.memory.estimator` means):
``forward`` = bytes saved during the forward pass and the loss (all alive when backward starts),
except 16-bit copies of trainable weights made by autocast (``param_copies``, reported apart: they
are mixed precision's working copy of the weights);
with gradient checkpointing, each checkpointed block re-runs its forward during backward and saves
its tensors again: ``recompute`` = the largest such block's new bytes. The reported ``total`` =
``forward + recompute``, the saved bytes alive when the first recomputed block starts its backward.
Checkpointing is measured with ``use_reentrant=True``: PyTorch's non-reentrant variant (the
transformers default) stores the same tensors through its own saved-tensor hooks, which hide them
from ours; the memory it keeps is the same (layer inputs + one recomputed block).

CUDA: :func:`cuda_peak` runs a real step between ``reset_peak_memory_stats`` and
``max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

import labkit
from labkit import LabkitError, compat, hardware
from labkit.dtypes import OPTIMIZERS


@dataclass
class Saved:
    """Saved-for-backward bytes of one training step (see the module docstring)."""

    forward: int  # model forward + loss, alive when backward starts
    logits: int  # the part of ``forward`` saved by the loss (log-softmax output, labels, scalar)
    recompute: int  # largest block re-saved during backward (checkpointing), else 0
    tensors: list[tuple[str, tuple[int, ...], str, int]] = field(default_factory=list)
    #: 16-bit copies of trainable weights saved under autocast (not in ``forward``): the
    #: estimator counts them with the weights, as mixed precision's working copy
    param_copies: int = 0

    @property
    def activations(self) -> int:
        """Everything but the loss buffer: comparable to ``activations.activation_bytes().activations``."""
        return self.forward - self.logits + self.recompute

    @property
    def total(self) -> int:
        return self.forward + self.recompute


def enable_checkpointing(model: torch.nn.Module, reentrant: bool = True) -> None:
    """Turn on transformers' activation (gradient) checkpointing without its rename warning."""
    kwargs = {"use_reentrant": reentrant}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # pragma: no cover - transformers < 5.24
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "config"):
        model.config.use_cache = False


def disable_checkpointing(model: torch.nn.Module) -> None:
    """Turn transformers' activation checkpointing off (no-op when it is off).

    transformers 5.24 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``; the
    old names still work but warn (removal planned for v6), so the new ones are called.
    """
    on = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.24 (and peft's
    if on is None:  # pragma: no cover - older transformers    wrappers, which forward it)
        on = getattr(model, "is_gradient_checkpointing", False)
    if on:
        new = getattr(model, "activation_checkpointing_disable", None)
        (new or model.gradient_checkpointing_disable)()


def storage_key(t: torch.Tensor) -> int:
    """One number per storage: its address for a real tensor; for a fake tensor (which has no
    data) the identity of its StorageImpl, which views of it share as they share an address."""
    st = t.untyped_storage()
    if isinstance(t, FakeTensor):
        return compat.storage_id(st)
    return st.data_ptr()


def _storages(tensors: Iterator[torch.Tensor]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        out[storage_key(t)] = t.untyped_storage().nbytes()
    return out


def _param_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and, for bitsandbytes 4-bit weights, their quant-state tensors."""
    for p in model.parameters():
        yield p
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            yield from (v for v in vars(qs).values() if isinstance(v, torch.Tensor))
            nested = getattr(qs, "state2", None)
            if nested is not None:
                yield from (v for v in vars(nested).values() if isinstance(v, torch.Tensor))
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb


_COPY_OPS = {"TBackward0", "ToCopyBackward0", "ViewBackward0", "TransposeBackward0"}


def _is_param_copy(t: torch.Tensor, params: set[int]) -> bool:
    """A cast/transposed copy of a trainable parameter (autocast's 16-bit weight for a linear);
    ``params``: the parameters' storage addresses (other leaves, like inputs, do not count)."""
    fn = t.grad_fn
    for _ in range(4):
        if fn is None:
            return False
        name = type(fn).__name__
        if name == "AccumulateGrad":
            return storage_key(fn.variable) in params
        if name not in _COPY_OPS or not fn.next_functions:
            return False
        fn = fn.next_functions[0][0]
    return False


def lm_loss(model: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's own causal-LM loss (what ``model(input_ids, labels=...)`` computes)."""
    return model.loss_function(logits, labels, vocab_size=logits.shape[-1])


def _check_input_ids(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """One line for token ids the model cannot embed (they would fail deep inside, or, past
    GPT-2's learned positions, with an index error from the position table)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point():
        got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise LabkitError(
            f"input_ids must be an integer tensor of token ids, got {got}; accepted: "
            "torch.long ids of shape (batch, seq), e.g. tokenizer(...)['input_ids']"
        )
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise LabkitError(
            f"input_ids has shape {tuple(input_ids.shape)}; accepted: (batch, seq), both >= 1"
        )
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(input_ids, FakeTensor):  # the dry run's ids have no values to check
        vocab = None
    lo, hi = (int(input_ids.min()), int(input_ids.max())) if vocab else (0, 0)
    if vocab and (lo < 0 or hi >= vocab):
        bad = lo if lo < 0 else hi
        raise LabkitError(
            f"token id {bad} is outside the vocabulary of {vocab} (vocab_size); "
            f"accepted: ids 0..{vocab - 1}"
        )
    positions = getattr(config, "n_positions", None)  # learned position embeddings (GPT-2)
    if positions and input_ids.shape[1] > positions:
        raise LabkitError(
            f"sequence length {input_ids.shape[1]} is longer than the model's {positions} "
            f"learned positions (n_positions); accepted: 1..{positions}"
        )


def saved_tensor_bytes(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    checkpointing: bool | None = None,
    backward: bool = True,
    keep_list: bool = False,
) -> Saved:
    """Run forward + loss (+ backward) and measure the bytes autograd saves for backward.

    ``checkpointing``: None leaves the model as it is; True/False switches transformers'
    checkpointing (reentrant, see module docstring). The model must be in train mode for dropout.
    Gradients are accumulated into ``.grad`` as in a normal step (zero them yourself).
    """
    _check_input_ids(model, input_ids)
    if checkpointing is not None:
        if checkpointing:
            enable_checkpointing(model)
        else:
            disable_checkpointing(model)
    params = set(_storages(_param_tensors(model)))
    keep: list[torch.Tensor] = []
    state = {"phase": "forward"}
    fwd: dict[int, int] = {}
    loss_part: dict[int, int] = {}
    segments: list[dict[int, int]] = []
    listing: list[tuple[str, tuple[int, ...], str, int]] = []
    copies: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "meta":
            return t
        st = t.untyped_storage()
        ptr = storage_key(t)
        if ptr in params:
            return t
        keep.append(t)
        if _is_param_copy(t, params):
            copies[ptr] = st.nbytes()  # autocast's cache holds all of them at once
            return t
        if state["phase"] in {"forward", "loss"}:
            target = fwd
        else:
            if not segments:
                segments.append({})
            target = segments[-1]
            if ptr in fwd:
                return t
        if ptr not in target:
            target[ptr] = st.nbytes()
            if state["phase"] == "loss":
                loss_part[ptr] = st.nbytes()
            if keep_list:
                name = type(t.grad_fn).__name__ if t.grad_fn is not None else "-"
                listing.append(
                    (f"{state['phase']}:{name}", tuple(t.shape), str(t.dtype), st.nbytes())
                )
        return t

    # one recomputed block per checkpointed segment's backward
    with (
        compat.on_checkpoint_recompute(lambda: segments.append({})),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        logits = model(input_ids=input_ids).logits
        state["phase"] = "loss"
        loss = lm_loss(model, logits, input_ids)
        state["phase"] = "backward"
        if backward:
            loss.backward()
    keep.clear()
    recompute = max((sum(s.values()) for s in segments), default=0)
    copied = sum(copies.values())
    return Saved(sum(fwd.values()), sum(loss_part.values()), recompute, listing, copied)


def make_optimizer(model: torch.nn.Module, name: str, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The optimizers the estimator knows, over the trainable parameters.

    ``adamw``/``sgd`` (momentum 0.9): torch; ``adafactor``: transformers' Adafactor (the
    Trainer's ``optim="adafactor"``); ``adamw8bit``: bitsandbytes' AdamW8bit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False)
    if name == "adamw8bit":
        hardware.quiet_logs()
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr)
    raise labkit.unknown("optimizer", name, OPTIMIZERS)


@dataclass
class States:
    """Bytes of model states read from real tensors (unique storages)."""

    weights: int
    gradients: int
    optimizer: int
    parameters: int
    trainable_parameters: int


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> States:
    """Bytes of weights (incl. quant-state), gradients and optimizer state, as they are now."""
    weights = sum(_storages(_param_tensors(model)).values())
    grads = sum(_storages(p.grad for p in model.parameters() if p.grad is not None).values())
    opt = 0
    if optimizer is not None:
        tensors = [
            v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)
        ]
        opt = sum(_storages(iter(tensors)).values())
    seen: set[int] = set()
    n = n_train = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n += p.numel()
        n_train += p.numel() if p.requires_grad else 0
    return States(weights, grads, opt, n, n_train)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    checkpointing: bool | None = None,
) -> tuple[States, Saved, float]:
    """One real training step: returns states after it, saved-tensor bytes and seconds taken."""
    model.train()
    start = time.perf_counter()
    saved = saved_tensor_bytes(model, input_ids, checkpointing)
    optimizer.step()
    seconds = time.perf_counter() - start
    return state_bytes(model, optimizer), saved, seconds


@contextlib.contextmanager
def _cuda_peak_window() -> Iterator[dict[str, int]]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = {"before": torch.cuda.memory_allocated()}
    yield out
    torch.cuda.synchronize()
    out["peak"] = torch.cuda.max_memory_allocated()
    out["after"] = torch.cuda.memory_allocated()


def cuda_peak(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    input_ids: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Peak CUDA bytes of one real step (forward, loss, backward, optimizer step).

    The allocator's peak is reset first; ``before`` is what was allocated when the step began
    (weights, and optimizer state from earlier steps), ``peak`` the maximum during the step.
    Call it twice and keep the second: AdamW allocates its state in the first step.
    """
    if not torch.cuda.is_available():
        raise LabkitError("cuda_peak needs a CUDA GPU; torch.cuda.is_available() is False")
    model.train()
    with _cuda_peak_window() as out:
        ctx = (
            torch.autocast("cuda", dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            logits = model(input_ids=input_ids).logits
            loss = lm_loss(model, logits, input_ids)
        loss.backward()
        del logits, loss
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
    return out


class _CallCounter(TorchDispatchMode):
    """Counts every ATen operator dispatched below autograd (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def operator_calls(fn: Callable[[], Any]) -> int:
    """How many ATen operators ``fn()`` dispatches (forward and backward, views included).

    A count of kernel launches' worth of fixed overhead, without ``torch.profiler`` (whose CPU
    tracer writes dated lines to stderr in torch 2.13, which would land in stored outputs).
    """
    if not callable(fn):
        raise LabkitError(f"operator_calls needs a function to call, got {type(fn).__name__}")
    with _CallCounter() as counter:
        fn()
    return counter.calls


# ----------------------------------------------------------------------------- for the step tracer
#: Public names of the helpers above, for :mod:`labkit.memory.trace`.
param_tensors = _param_tensors
check_input_ids = _check_input_ids
is_param_copy = _is_param_copy


def storage_id(t: torch.Tensor) -> int:
    """The identity of ``t``'s StorageImpl (real and fake tensors alike; views share it;
    :func:`labkit.compat.storage_id`). Unique while the storage lives: a freed storage's number
    can come back for a new one."""
    return compat.storage_id(t.untyped_storage())
