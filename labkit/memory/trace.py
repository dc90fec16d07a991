"""Live bytes over a real training step, storage by storage: the measured peak the prediction in
:mod:`labkit.memory.peak` is held to.

:class:`StepTracker` is a ``TorchDispatchMode``: every storage an op creates is followed until
it is freed (a ``weakref.finalize`` on the storage itself, so a tensor autograd saves, or a
shallow copy of it, keeps its storage counted), and the weights, gradients and optimizer state
alive before the step are counted from the start. Each op is one event: the live bytes after it
and the phase it ran in (``forward`` = model forward and loss, ``backward``, ``optimizer`` =
``optimizer.step()``, ``zero_grad``). Storages are told apart by their StorageImpl
(``untyped_storage()._cdata``, unique while alive; for real and fake tensors alike).

:func:`trace_training` runs real steps (forward, backward, ``optimizer.step()``,
``zero_grad(set_to_none=True)``, as transformers' Trainer orders them; with gradient accumulation
N forward/backward pairs before the step) and returns one :class:`StepTrace` per step: the first
step creates the optimizer state, later ones find it alive. At the peak the live storages are
sorted into categories: ``weights`` (parameters, buffers and 4-bit quant-state),
``weight_copies`` (autocast's 16-bit casts of weights), ``gradients`` (``.grad`` of the
parameters), ``optimizer_state``, ``saved_activations`` (what autograd keeps for backward,
the loss buffer included) and ``temporaries`` (everything else: logits, the gradients flowing
through backward, the optimizer's intermediates).

What a CPU trace cannot see: allocations inside a kernel that are not returned as an op's output
(workspaces), and everything CUDA adds (context, the caching allocator's reserve; see
:mod:`labkit.memory.peak`).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from labkit import LabkitError
from labkit.memory import measure

#: The phases of a training step, in order.
PHASES = ("forward", "backward", "optimizer", "zero_grad")
#: The categories live bytes are sorted into at the peak.
CATEGORIES = (
    "weights",
    "weight_copies",
    "gradients",
    "optimizer_state",
    "saved_activations",
    "temporaries",
    "inputs",
)


@dataclass
class _Storage:
    serial: int
    nbytes: int
    phase: str
    op: str
    category: str = "temporaries"


@dataclass
class StepTrace:
    """One training step, measured: ``timeline[i]`` live bytes after event ``i`` (an op),
    ``phases[i]`` its phase; ``peak`` the largest, at ``peak_index`` in ``peak_phase``; ``alive``
    the peak's bytes by category (:data:`CATEGORIES`); ``phase_peaks`` the largest live bytes
    within each phase; ``before`` the bytes alive when the step began (by category);
    ``largest`` the biggest storages alive at the peak (category, op that made it, bytes)."""

    timeline: list[int]
    phases: list[str]
    ops: list[str]
    peak: int
    peak_index: int
    peak_phase: str
    alive: dict[str, int]
    phase_peaks: dict[str, int]
    phase_alive: dict[str, dict[str, int]]
    before: dict[str, int]
    largest: list[tuple[str, str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The figures without the timeline (for printing and JSON)."""
        return {
            "peak": self.peak,
            "peak_phase": self.peak_phase,
            "alive": dict(self.alive),
            "phase_peaks": dict(self.phase_peaks),
            "phase_alive": {p: dict(a) for p, a in self.phase_alive.items()},
            "before": dict(self.before),
        }


class StepTracker(TorchDispatchMode):
    """Follows every storage until it is freed (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, _Storage] = {}
        self.now = 0
        self.phase = "forward"
        self._serial = itertools.count()
        self.timeline: list[int] = []
        self.phases: list[str] = []
        self.ops: list[str] = []
        #: per phase: (largest live bytes, its event)
        self.phase_max: dict[str, tuple[int, int]] = {}
        #: every storage counted (True) or freed (False), and per event how long the log was:
        #: the live set at any event is replayed from them (cheaper than copying it at each peak)
        self._log: list[tuple[_Storage, bool]] = []
        self._marks: list[int] = []

    # -- storages ------------------------------------------------------------------------------
    def _free(self, key: int, serial: int) -> None:
        rec = self.live.get(key)
        if rec is not None and rec.serial == serial:
            del self.live[key]
            self.now -= rec.nbytes
            self._log.append((rec, False))

    def add(self, t: torch.Tensor, op: str, category: str | None = None) -> _Storage | None:
        """Count ``t``'s storage from now until it is freed (once per storage)."""
        if not isinstance(t, torch.Tensor) or t.device.type == "meta" and not _fake(t):
            return None
        st = t.untyped_storage()
        key = measure.storage_id(t)
        rec = self.live.get(key)
        if rec is None:
            rec = _Storage(next(self._serial), st.nbytes(), self.phase, op)
            self.live[key] = rec
            self.now += rec.nbytes
            self._log.append((rec, True))
            weakref.finalize(st, self._free, key, rec.serial)
        if category is not None:
            rec.category = category
        return rec

    def record(self, t: torch.Tensor) -> _Storage | None:
        """The live record of ``t``'s storage (None when it is not followed)."""
        if not isinstance(t, torch.Tensor):
            return None
        return self.live.get(measure.storage_id(t))

    def event(self, op: str = "-") -> None:
        self.timeline.append(self.now)
        self.phases.append(self.phase)
        self.ops.append(op)
        self._marks.append(len(self._log))
        best = self.phase_max.get(self.phase)
        if best is None or self.now > best[0]:
            self.phase_max[self.phase] = (self.now, len(self.timeline) - 1)

    def live_at(self, index: int) -> list[_Storage]:
        """The storages alive just after event ``index``."""
        live: dict[int, _Storage] = {}
        for rec, alive in self._log[: self._marks[index]]:
            if alive:
                live[rec.serial] = rec
            else:
                live.pop(rec.serial, None)
        return list(live.values())

    # -- dispatch ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, tuple | list) else (out,)
        name = func.__name__
        for t in flat:
            if isinstance(t, tuple | list):  # foreach ops return lists
                for u in t:
                    self.add(u, name)
            else:
                self.add(t, name)
        self.event(name)
        return out


def _fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> Iterator[torch.Tensor]:
    """The optimizer's state, and tensors it holds itself (bitsandbytes' quantile maps, made
    when it is built and shared by every parameter's state)."""
    if optimizer is None:
        return
    for v in vars(optimizer).values():
        if isinstance(v, dict):
            yield from (x for x in v.values() if isinstance(x, torch.Tensor))
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield v
            elif hasattr(v, "__dict__"):  # bitsandbytes keeps some state in objects
                yield from (x for x in vars(v).values() if isinstance(x, torch.Tensor))


def _model_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from measure.param_tensors(model)
    yield from model.buffers()


def _categorise(tracker: StepTracker, model, optimizer, grads: Iterable[torch.Tensor]) -> None:
    """Count weights, gradients and optimizer state (from now on if they were not followed yet)
    and mark them (saved activations and weight copies are marked by the pack hook)."""
    for t in _model_tensors(model):
        tracker.add(t, "weight", "weights")
    for t in grads:
        tracker.add(t, "grad", "gradients")
    for t in _optimizer_tensors(optimizer):
        tracker.add(t, "state", "optimizer_state")


class _Step:
    """The state of one traced step: the tracker, the saved-tensor hook, the phase switch."""

    def __init__(self, model, optimizer, tracker: StepTracker | None = None) -> None:
        self.model, self.optimizer = model, optimizer
        self.tracker = tracker or StepTracker()
        self.params = {measure.storage_key(p) for p in measure.param_tensors(model)}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        rec = self.tracker.record(t)
        if rec is not None and rec.category == "temporaries":  # not weights, ids, state
            copy = measure.is_param_copy(t, self.params)
            rec.category = "weight_copies" if copy else "saved_activations"
        return t

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.model.parameters() if p.grad is not None]


def _forward_backward(
    step: _Step, ids: torch.Tensor, autocast: Any, outputs_alive: bool, loss_fn: Any
) -> None:
    """The model's own causal-LM loss (labels = the ids), or ``loss_fn(model, ids)``, then
    backward. ``outputs_alive``: the output (and its logits) is held until backward ends, as
    ``out = model(**batch); out.loss.backward()`` does; else only the loss is kept, as
    ``Trainer.compute_loss`` returns."""
    step.tracker.phase = "forward"
    with autocast():
        if loss_fn is not None:
            out, loss = None, loss_fn(step.model, ids)
        else:
            out = step.model(input_ids=ids, labels=ids)
            loss = out.loss
    if not outputs_alive:
        del out
    step.tracker.phase = "backward"
    loss.backward()


def _run_step(
    step: _Step,
    micro_batches: list[torch.Tensor],
    autocast: Any,
    outputs_alive: bool,
    loss_fn: Any = None,
) -> None:
    tr, model, opt = step.tracker, step.model, step.optimizer
    for ids in micro_batches:
        _forward_backward(step, ids, autocast, outputs_alive, loss_fn)
        _categorise(tr, model, opt, step.grads())
    tr.phase = "optimizer"
    if opt is not None:
        opt.step()
    _categorise(tr, model, opt, step.grads())
    tr.phase = "zero_grad"
    tr.event()  # what zero_grad finds: the gradients are freed now
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    tr.event()


def _by_category(live: list[_Storage]) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for rec in live:
        out[rec.category] += rec.nbytes
    return out


def _result(step: _Step, before: dict[str, int]) -> StepTrace:
    tr = step.tracker
    phase, (peak, index) = max(tr.phase_max.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
    live = tr.live_at(index)
    largest = sorted(
        ((r.category, f"{r.phase}:{r.op}", r.nbytes) for r in live),
        key=lambda x: -x[2],
    )[:8]
    return StepTrace(
        timeline=list(tr.timeline),
        phases=list(tr.phases),
        ops=list(tr.ops),
        peak=peak,
        peak_index=index,
        peak_phase=phase,
        alive=_by_category(live),
        phase_peaks={p: v[0] for p, v in tr.phase_max.items()},
        phase_alive={p: _by_category(tr.live_at(v[1])) for p, v in tr.phase_max.items()},
        before=before,
        largest=largest,
    )


def trace_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    batches: torch.Tensor | list[torch.Tensor],
    *,
    steps: int = 2,
    autocast_dtype: torch.dtype | None = None,
    outputs_alive: bool = True,
    tracker: StepTracker | None = None,
    loss_fn: Any = None,
) -> list[StepTrace]:
    """Run ``steps`` real training steps of ``model`` and trace each (see the module docstring).

    ``batches``: the token ids of one micro-batch, or a list of micro-batches (gradient
    accumulation: all of them run forward and backward before the optimizer step). The model is
    put in train mode; gradients must be unset (``None``) when it starts.
    ``autocast_dtype``: run forward under CPU autocast (mixed precision). The loss is the model's
    own causal-LM loss (labels = ids); ``outputs_alive``: the model output, with its b·s·V logits,
    is held until backward ends (``out = model(**batch); out.loss.backward()``); False drops it
    before backward, as transformers' Trainer does (``compute_loss`` returns the loss only).
    ``loss_fn(model, ids) -> loss``: another loss in place of the model's own (the chunked loss
    of :func:`labkit.memory.levers.chunked_loss`, a loss normalised over all micro-batches).
    """
    micro = [batches] if isinstance(batches, torch.Tensor) else list(batches)
    if not micro:
        raise LabkitError("no micro-batch given; accepted: token ids or a list of them")
    for ids in micro:
        measure.check_input_ids(model, ids)
    if steps < 1:
        raise LabkitError(f"steps must be >= 1, got {steps}")
    if any(p.grad is not None for p in model.parameters()):
        raise LabkitError("the model has gradients already; call zero_grad(set_to_none=True) first")
    model.train()

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=autocast_dtype)

    out = []
    for n in range(steps):
        step = _Step(model, optimizer, tracker if tracker is not None and n == steps - 1 else None)
        tr = step.tracker
        _categorise(tr, model, optimizer, step.grads())
        for ids in micro:
            tr.add(ids, "ids", "inputs")
        before = dict.fromkeys(CATEGORIES, 0)
        for rec in tr.live.values():
            before[rec.category] += rec.nbytes
        tr.event()
        with tr, torch.autograd.graph.saved_tensors_hooks(step.pack, lambda t: t):
            _run_step(step, micro, autocast, outputs_alive, loss_fn)
        out.append(_result(step, before))
        del step, tr
    return out
