"""Memory of any causal LM transformers can build, by a dry run: one training step (or one prefill)
run on fake tensors, which have shapes, dtypes and storages but no data, so no memory is used and
no arithmetic is done.

- :func:`training_activations`: what autograd keeps for backward in one training step (full
  fine-tuning, frozen first layers, LoRA; eager or SDPA; checkpointing on or off; pure 16-bit or
  autocast), measured by :func:`labkit.memory.measure.saved_tensor_bytes` itself (the same pack hook, the
  same rules for storage sharing and views, the same reentrant checkpointing) on a model built
  under ``FakeTensorMode``;
- :func:`prefill_peak`: the largest set of live tensors during a prefill (no grad), besides the
  weights: activations, attention masks, the KV cache and the logits, followed op by op;
- :func:`live_peak`: the same live-tensor tracker for a real model (the CPU measurement the
  estimate is checked against), and :func:`cache_bytes`, the KV cache a real or fake prefill left.

Why ``FakeTensorMode`` and not the meta device (checked with torch 2.13): a fake tensor keeps its
storage identity (views share one StorageImpl, which :func:`labkit.memory.measure.storage_key` reads; a
fake storage's ``data_ptr()`` is 0 for all), and it reports the device it fakes (``cpu``), so every
op dispatches as on a real CPU: SDPA picks the CPU flash kernel (output + logsumexp saved) or the
math path exactly as a real step does. On the meta device the kernels chosen differ. Faking a CUDA
device needs a CUDA build of torch (this CPU build aborts), so the dry run reproduces a *CPU* step;
on CUDA the differences are dropout masks (1 byte, not the activation dtype), LayerNorm statistics
(fp32) and the SDPA kernel's extras. The five formula families keep their derivation
(:mod:`labkit.memory.activations`, exact for both devices); a test shows formula == dry run on them.

QLoRA's NF4 base cannot be faked (bitsandbytes quantizes real data): its dry run uses a 16-bit
base of the compute dtype, as :func:`labkit.memory.estimator.training_memory`'s formula path does.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from labkit import LabkitError, compat
from labkit.checks import choice, positive
from labkit.memory import measure
from labkit.memory.activations import Activations
from labkit.memory.job import ATTENTIONS, OptionError, TrainingJob
from labkit.models import architecture
from labkit.models.targets import lora_modules, trainable_shapes

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DryRun:
    """A dry run's figures in bytes. ``saved``: :class:`labkit.memory.measure.Saved` of the fake step;
    ``param_copies``: autocast's 16-bit copies of trainable weights (counted with the weights)."""

    activations: Activations
    param_copies: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _dtype(name: str, what: str = "activation dtype") -> torch.dtype:
    choice(what, name, tuple(TORCH_DTYPES))
    return TORCH_DTYPES[name]


def fake_model(config: Any, *, attention: str = "sdpa", dtype: str = "fp32", prepare=None):
    """The causal LM ``config`` describes on fake CPU tensors, in ``dtype``, with ``attention``,
    in train mode; returns ``(model, mode)`` (run it inside ``with mode:``).

    The model is built on the meta device (and ``prepare(model)`` applied there: freezing, peft
    adapters), then every parameter, buffer and tensor attribute is replaced by a fake CPU tensor
    of the same shape and dtype, tied parameters by one. (Built under ``FakeTensorMode``
    directly, ``module.to()`` fails: fake tensors carry weakrefs, which ``swap_tensors`` refuses.)
    """
    choice("attention", attention, ATTENTIONS)
    td = _dtype(dtype, "weight dtype")
    with torch.device("meta"):
        try:
            model = architecture.build_causal_lm(config, attn_implementation=attention, dtype=td)
        except LabkitError:
            if attention != "sdpa":
                raise
            architecture.build_causal_lm(config, attn_implementation="eager", dtype=td)
            # it builds with eager attention: SDPA is what this model type lacks
            raise OptionError(
                f"{architecture.model_type_of(config)} has no SDPA attention in transformers "
                f"{transformers.__version__}; use {{attention:eager}}"
            ) from None
        if prepare is not None:
            model = prepare(model)
    return to_fake(model)


def to_fake(model: torch.nn.Module):
    """Any model built on the meta device, with every parameter, buffer and tensor attribute
    replaced by a fake CPU tensor (tied ones by one), in train mode; returns ``(model, mode)``."""
    mode = FakeTensorMode()
    made: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            with mode:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            if isinstance(t, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
            made[id(t)] = new
        return made[id(t)]

    for mod in model.modules():  # setattr on a registered name replaces it in place
        for name, p in list(mod.named_parameters(recurse=False, remove_duplicate=False)):
            setattr(mod, name, fake(p))
        for name, buf in list(mod.named_buffers(recurse=False, remove_duplicate=False)):
            setattr(mod, name, fake(buf))
        for name, value in list(vars(mod).items()):
            if isinstance(value, torch.Tensor) and value.device.type == "meta":
                setattr(mod, name, fake(value))
    return model.train(), mode


def _apply_method(model, config, job: TrainingJob):
    """Freeze / add LoRA adapters as :func:`labkit.models.targets.trainable_shapes` counts them
    (adapters in the job's adapter dtype, ``lora_dropout=0``)."""
    if job.method == "frozen":
        keep = set(trainable_shapes(config, "frozen", frozen_layers=job.frozen_layers))
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
        return model
    if not job.lora:
        return model
    from peft import LoraConfig, get_peft_model  # imports peft only for a LoRA dry run

    mods = lora_modules(config, job.lora_targets)
    lora = LoraConfig(
        r=job.lora_r,
        target_modules=[m.name for m in mods],
        lora_dropout=0.0,
        fan_in_fan_out=any(m.kind == "conv1d" for m in mods),
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(TORCH_DTYPES[job.adapters])
    return model


@contextlib.contextmanager
def fake_inputs_context() -> Iterator[None]:
    """What a forward on fake tensors needs from the libraries (:mod:`labkit.compat`): the batch
    is not packed (the dry run's positions are 0..s-1; transformers cannot read fake ones), and
    the meta ``_grouped_mm`` kernel takes fp32 and fp16 as the CPU kernel does."""
    with compat.no_packed_sequences(), compat.grouped_mm_any_dtype():
        yield


@dataclass
class FakeStep:
    """One forward + loss of a job's model on fake tensors (:func:`fake_step`): the prepared
    ``model`` (run more ops on it inside ``with mode:``), its ``weights`` dtype and what autograd
    saved (``saved``, :class:`labkit.memory.measure.Saved`)."""

    model: torch.nn.Module
    mode: FakeTensorMode
    weights: str
    saved: measure.Saved
    seconds: float


def fake_step(config: Any, job: TrainingJob) -> FakeStep:
    """The model of ``job`` on fake CPU tensors (method applied: frozen layers, peft adapters),
    one forward + loss measured by :func:`labkit.memory.measure.saved_tensor_bytes` (backward too
    with checkpointing, the only case where it saves more: the recomputed blocks).

    The weights are in the job's weight dtype (:attr:`TrainingJob.weight_dtype`; QLoRA's NF4 base,
    which cannot be faked, in the compute dtype), under autocast for a mixed precision, in eval
    mode without ``dropout``.
    """
    start = time.perf_counter()
    weights = job.precision.compute if job.method == "qlora" else job.weight_dtype

    def prepare(model):
        return _apply_method(model, config, job)

    model, mode = fake_model(config, attention=job.attention, dtype=weights, prepare=prepare)
    with mode:
        if not job.dropout:
            model.eval()
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (job.batch, job.seq))
        compute = TORCH_DTYPES[job.precision.compute]
        mixed = job.precision.mixed
        cast = torch.autocast("cpu", dtype=compute) if mixed else contextlib.nullcontext()
        with cast, fake_inputs_context():
            # without checkpointing all is saved by the end of the forward and the loss: the
            # backward (as slow as the forward on fake tensors) runs only to recompute blocks
            saved = measure.saved_tensor_bytes(
                model, ids, checkpointing=job.checkpointing, backward=job.checkpointing
            )
    return FakeStep(model, mode, weights, saved, time.perf_counter() - start)


def training_activations(config: Any, job: TrainingJob | None = None, **options: Any) -> DryRun:
    """What autograd keeps for backward in one training step of ``job`` (or a
    :class:`TrainingJob` of ``options``), by a dry run on fake tensors (:func:`fake_step`).

    The result's ``activations`` / ``logits`` / ``recompute`` mean what
    :func:`labkit.memory.activations.job_activation_bytes` means (the measured ``Saved``'s);
    ``param_copies``: autocast's 16-bit copies of trainable weights.
    """
    job = TrainingJob.of(job, options)
    step = fake_step(config, job)
    saved = step.saved
    items = {"forward": saved.forward - saved.logits, "recompute_one_layer": saved.recompute}
    acts = Activations(saved.activations, saved.logits, 0, saved.recompute, items)
    details = {"method": job.method, "weights": step.weights}
    return DryRun(acts, saved.param_copies, step.seconds, details)


# ----------------------------------------------------------------------------- live tensors
class _LiveTensors(TorchDispatchMode):
    """Follows every storage an op creates (not the ones that existed before: the weights) until
    the last tensor on it is freed; ``peak`` is the largest sum of live storages' bytes seen after
    an op. Works for real and for fake tensors (storages keyed by :func:`measure.storage_key`)."""

    def __init__(self) -> None:
        super().__init__()
        self.before: set[int] = set()
        self.live: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.now = self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, tuple | list) else (out,)
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            key = measure.storage_key(t)
            if key in self.before:
                continue
            if key not in self.live:
                self.live[key] = t.untyped_storage().nbytes()
                self.now += self.live[key]
            self.refs[key] = self.refs.get(key, 0) + 1
            weakref.finalize(t, self._drop, key)
        self.peak = max(self.peak, self.now)
        return out


def _prefill(model, ids: torch.Tensor) -> tuple[int, int, int]:
    """(peak live bytes beyond what existed before, KV-cache bytes after, logits bytes)."""
    tracker = _LiveTensors()
    tracker.before = {measure.storage_key(t) for t in model.parameters()}
    tracker.before |= {measure.storage_key(t) for t in model.buffers()}
    with torch.no_grad(), fake_inputs_context(), tracker:
        out = model(input_ids=ids, use_cache=True)
        # never read the old name while `cache` is there: reading it logs transformers 5.24's
        # "`past_key_values`/`cache_params` are deprecated" (a default argument is evaluated)
        kv = cache_bytes(out["cache"] if "cache" in out else out.get("past_key_values"))
        logits = out.logits.untyped_storage().nbytes()
        del out
    return tracker.peak, kv, logits


def cache_bytes(cache: Any) -> int:
    """Bytes of the key/value tensors a transformers cache holds (unique storages)."""
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                seen[measure.storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def live_peak(model, input_ids: torch.Tensor) -> dict[str, int]:
    """A real prefill of ``model`` on ``input_ids`` (no grad, the cache on), measured: ``peak``, the
    largest set of live tensors it created (weights excluded), ``kv_cache`` and ``logits``."""
    peak, kv, logits = _prefill(model.eval(), input_ids)
    return {"peak": peak, "kv_cache": kv, "logits": logits}


def prefill_peak(
    config: Any, batch: int, context: int, dtype: str = "bf16", attention: str = "sdpa"
) -> dict[str, int]:
    """The prefill of ``context`` tokens by a dry run: ``peak`` (the largest set of live tensors
    beyond the weights: activations, masks, the KV cache filled so far, the logits),
    ``kv_cache`` (what the cache holds at the end: sliding-window layers keep their window only)
    and ``logits`` (transformers computes all b·s·V of them in a prefill), in bytes."""
    b, q = positive("batch", batch), positive("context length", context)
    model, mode = fake_model(config, attention=attention, dtype=dtype)
    with mode:
        ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (b, q))
        peak, kv, logits = _prefill(model.eval(), ids)
    if peak <= 0:
        raise LabkitError("the dry run saw no tensors; accepted: a causal LM config")
    return {"peak": peak, "kv_cache": kv, "logits": logits}
